"""Every layer offloaded to a GPU backend (CUDA, Metal): the captured states are the CPU's, and
speculative greedy output is plain decoding's. Skipped on CPU-only builds of llama-cpp-python
(CI); on a GPU machine: `pytest tests/test_gpu.py`.

On a GPU, a verify decode of n rows and a plain decode of one row run different matmul
kernels, so a logit can differ in its last bits between the two. Greedy output is then
identical except where that flips a greedy pick: the check below (fidelity.py, which the
benchmark reports too) accepts a departure only where each side's token is the target's own
argmax at the row that chose it, recomputed by replaying that side's decodes on a separate
instance."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest

from conftest import ARCHS
from llama_eagle3 import Llama
from llama_eagle3.defaults import default_head
from llama_eagle3.fidelity import DecodeLog, Diagnosis
from test_capture import captured, make

pytestmark = pytest.mark.skipif(not llama_cpp.llama_supports_gpu_offload(),
                                reason="this llama-cpp-python build has no GPU backend")

GPU = dict(n_gpu_layers=-1)
PROMPTS = ["the cat", "hello there is a", "in the beginning of the", "it is what it is, or"]
CHATS = ["Write a short poem about the sea.", "Write a Python function that reverses a string.",
         "What is 17 times 23? Show your steps.", "Give me four tips for sleeping better."]


def greedy(llm: llama_cpp.Llama, log: DecodeLog, tokens: list[int], n: int) -> list[int]:
    """n greedy tokens from an empty cache, recorded; the ids the target evaluated (prompt included)."""
    llm.reset()
    log.start()
    for k, _ in enumerate(llm.generate(tokens, temp=0.0), 1):
        if k == n:
            break
    log.stop()
    return llm._input_ids.tolist()


class SameOrExplained:
    """Checks that spec's greedy output is plain's, or departs only where the batch kernel explains it."""

    def __init__(self, model: str, plain: llama_cpp.Llama, spec: llama_cpp.Llama, settings: dict):
        self.plain, self.spec = (plain, DecodeLog(plain)), (spec, DecodeLog(spec))
        self.diagnosis = Diagnosis(model, settings)

    def __call__(self, tokens: list[int], n: int) -> None:
        want, got = (greedy(llm, log, tokens, n) for llm, log in (self.plain, self.spec))
        d = self.diagnosis.explain((want, self.plain[1]), {"spec": (got, self.spec[1])}).get("spec")
        if d is None:
            assert len(got) == len(want)
            return
        assert d["explained"], f"diverged at token {d['at'] - len(tokens)}, not explained by the batch: {d}"


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
    settings = dict(n_ctx=512, flash_attn=True, **GPU)
    plain = llama_cpp.Llama(str(targets[arch]), verbose=False, **settings)
    spec = Llama(str(targets[arch]), verbose=False, eagle3_head=str(heads[arch]), eagle3_p_min=0.0,
                 eagle3_adaptive=False, eagle3_draft_max=4, eagle3_tree_width=width, **settings)
    check = SameOrExplained(str(targets[arch]), plain, spec, settings)
    for p in PROMPTS:
        check(plain.tokenize(p.encode()), 80)
    assert spec.speculative_stats()["rounds"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["chain", "tree", "auto"])
def test_gpu_shipped_head_matches_plain(mode, smollm2):
    settings = dict(n_ctx=1024, flash_attn=True, **GPU)
    plain = llama_cpp.Llama(str(smollm2), verbose=False, **settings)
    spec = Llama(str(smollm2), verbose=False, eagle3_head=str(default_head()), eagle3_draft_max=4,
                 eagle3_adaptive=mode == "auto", eagle3_tree_width=1 if mode == "chain" else 3, **settings)
    check = SameOrExplained(str(smollm2), plain, spec, settings)
    for c in CHATS:
        check(plain.tokenize(_chat_prompt(plain, c).encode(), special=True), 128)
    if mode != "auto":  # auto may rightly decode plainly (as it mostly did on an H200 with this head)
        stats = spec.speculative_stats()
        assert stats["rounds"] > 0 and stats["mean_accepted_length"] > 1.3, stats


def _chat_prompt(llm: llama_cpp.Llama, content: str) -> str:
    from llama_eagle3.prompts import rendered_prompt

    return rendered_prompt(llm, [{"role": "user", "content": content}])
