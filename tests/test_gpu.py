"""Every layer offloaded to a GPU backend (CUDA, Metal): the captured states are the CPU's, and
speculative greedy output is plain decoding's. Skipped on CPU-only builds of llama-cpp-python
(CI); on a GPU machine: `pytest tests/test_gpu.py`.

On a GPU, a verify decode of n rows and a plain decode of one row run different matmul
kernels, so a logit can differ in its last bits between the two. Greedy output is then
identical except where plain decoding's top two logits tie to within that noise: the check
below (bench._divergence, which the benchmark reports too) accepts a divergence only at such
a near-tie, measured on the target's own logits."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest

from conftest import ARCHS
from llama_eagle3 import Llama
from llama_eagle3.bench import NEAR_TIE, _divergence
from llama_eagle3.defaults import default_head
from test_capture import captured, make

pytestmark = pytest.mark.skipif(not llama_cpp.llama_supports_gpu_offload(),
                                reason="this llama-cpp-python build has no GPU backend")

GPU = dict(n_gpu_layers=-1)
PROMPTS = ["the cat", "hello there is a", "in the beginning of the", "it is what it is, or"]
CHATS = ["Write a short poem about the sea.", "Write a Python function that reverses a string.",
         "What is 17 times 23? Show your steps.", "Give me four tips for sleeping better."]


def greedy(llm: llama_cpp.Llama, tokens: list[int], n: int) -> list[int]:
    out: list[int] = []
    for t in llm.generate(tokens, temp=0.0):
        out.append(t)
        if len(out) == n:
            break
    return out


def assert_same_or_near_tie(plain: llama_cpp.Llama, prompt: list[int], want: list[int], got: list[int]) -> None:
    d = _divergence(plain, prompt + want, prompt + got)
    if d is None:
        assert len(got) == len(want)
        return
    assert 0 <= d["gap"] < NEAR_TIE, (f"diverged at token {d['at'] - len(prompt)}: plain's logit leads the "
                                      f"speculative token's by {d['gap']:.4f}")


@pytest.mark.parametrize("arch", ARCHS)
def test_gpu_capture_matches_cpu(arch, targets, heads):
    tokens = list(range(5, 45))
    cpu = captured(make(targets[arch], heads[arch], "auto"), tokens, [40])
    gpu = captured(make(targets[arch], heads[arch], "auto", **GPU), tokens, [40])
    assert gpu.shape == cpu.shape
    # other kernels, same states: a row out of place would differ by the states' own scale
    assert np.abs(gpu - cpu).max() <= 0.02 * np.abs(cpu).max()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("width", [1, 3])
def test_gpu_greedy_matches_plain(arch, width, targets, heads):
    plain = llama_cpp.Llama(str(targets[arch]), n_ctx=512, verbose=False, flash_attn=True, **GPU)
    spec = Llama(str(targets[arch]), n_ctx=512, verbose=False, eagle3_head=str(heads[arch]), eagle3_p_min=0.0,
                 eagle3_adaptive=False, eagle3_draft_max=4, eagle3_tree_width=width, **GPU)
    for p in PROMPTS:
        toks = plain.tokenize(p.encode())
        assert_same_or_near_tie(plain, toks, greedy(plain, toks, 80), greedy(spec, toks, 80))
    assert spec.speculative_stats()["rounds"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["chain", "tree", "auto"])
def test_gpu_shipped_head_matches_plain(mode, smollm2):
    plain = llama_cpp.Llama(str(smollm2), n_ctx=1024, verbose=False, flash_attn=True, **GPU)
    spec = Llama(str(smollm2), n_ctx=1024, verbose=False, flash_attn=True, eagle3_head=str(default_head()),
                 eagle3_draft_max=4, eagle3_adaptive=mode == "auto", eagle3_tree_width=1 if mode == "chain" else 3,
                 **GPU)
    for c in CHATS:
        toks = plain.tokenize(_chat_prompt(plain, c).encode(), special=True)
        assert_same_or_near_tie(plain, toks, greedy(plain, toks, 128), greedy(spec, toks, 128))
    if mode != "auto":  # auto may rightly decode plainly (as it mostly did on an H200 with this head)
        stats = spec.speculative_stats()
        assert stats["rounds"] > 0 and stats["mean_accepted_length"] > 1.3, stats


def _chat_prompt(llm: llama_cpp.Llama, content: str) -> str:
    from llama_eagle3.bench import _rendered_prompt

    return _rendered_prompt(llm, [{"role": "user", "content": content}])
