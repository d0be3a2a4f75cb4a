"""Greedy speculative output is token-for-token that of plain llama-cpp-python (tiny targets)."""

from __future__ import annotations

import llama_cpp
import pytest

import oracle
import tiny_models as tm
from conftest import ARCHS
from llama_eagle3 import Llama

PROMPTS = ["the cat", "hello there is a", "a", "in the beginning of the", "it is what it is, or"]
LENGTHS = [1, 7, 33, 80]


def plain_llm(target, **kw) -> llama_cpp.Llama:
    return llama_cpp.Llama(str(target), n_ctx=kw.pop("n_ctx", 512), verbose=False, flash_attn=True, **kw)


def spec_llm(target, head, **kw) -> Llama:
    kw.setdefault("eagle3_p_min", 0.0)
    kw.setdefault("eagle3_adaptive", False)  # every round drafts: every acceptance length is exercised
    return Llama(str(target), n_ctx=kw.pop("n_ctx", 512), verbose=False, eagle3_head=str(head), **kw)


def completion_tokens(llm, prompt: str, n: int) -> list[int]:
    toks = llm.tokenize(prompt.encode())
    out = []
    for t in llama_cpp.Llama.generate(llm, toks, temp=0.0) if not isinstance(llm, Llama) else llm.generate(toks, temp=0.0):
        out.append(t)
        if len(out) == n:
            break
    return toks + out


@pytest.fixture(scope="module")
def references(targets):
    """Plain greedy token sequences (prompt + 100 tokens) per architecture and prompt."""
    out = {}
    for arch in ARCHS:
        p = plain_llm(targets[arch])
        out[arch] = {prompt: completion_tokens(p, prompt, 100) for prompt in PROMPTS}
        p.close()
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("drafter", ["head", "oracle", "head tree", "oracle tree"])
def test_completions_identical(arch, drafter, targets, heads, references):
    plain = plain_llm(targets[arch])
    tree = dict(eagle3_tree_width=3, eagle3_tree_nodes=10) if drafter.endswith("tree") else {}
    spec = spec_llm(targets[arch], heads[arch], eagle3_draft_max=4, **tree)
    if drafter.startswith("oracle"):
        oracle.install(spec, list(references[arch].values()))
    for prompt in PROMPTS:
        for n in LENGTHS:
            a = plain(prompt, max_tokens=n, temperature=0.0)
            b = spec(prompt, max_tokens=n, temperature=0.0)
            assert b["choices"][0]["text"] == a["choices"][0]["text"], (prompt, n)
            assert b["usage"] == a["usage"]
            assert b["choices"][0]["finish_reason"] == a["choices"][0]["finish_reason"]
    stats = spec.speculative_stats()
    assert stats["rounds"] > 0 and stats["drafted"] > 0
    if drafter.startswith("oracle"):
        # every acceptance length occurred, including full chains
        assert 0 < stats["accepted"] < stats["drafted"]
        assert stats["accepted_at"][3] > 0
        assert stats["mean_accepted_length"] > 1.5


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_streaming_stop_and_closed_stream(arch, targets, heads, references):
    plain = plain_llm(targets[arch])
    spec = spec_llm(targets[arch], heads[arch], eagle3_draft_max=3)
    oracle.install(spec, list(references[arch].values()), error_rate=0.2)
    prompt = PROMPTS[3]
    full = plain(prompt, max_tokens=60, temperature=0.0)["choices"][0]["text"]

    def streamed(llm) -> list[str]:
        return [c["choices"][0]["text"] for c in llm(prompt, max_tokens=60, temperature=0.0, stream=True)]

    assert streamed(spec) == streamed(plain)  # chunk by chunk

    stop = full[len(full) // 2 : len(full) // 2 + 3]
    a = plain(prompt, max_tokens=60, temperature=0.0, stop=[stop])
    b = spec(prompt, max_tokens=60, temperature=0.0, stop=[stop])
    assert b["choices"][0]["text"] == a["choices"][0]["text"]
    assert b["choices"][0]["finish_reason"] == a["choices"][0]["finish_reason"] == "stop"

    # the caller abandons a stream mid-generation; later calls must not see its state
    stream = spec(prompt, max_tokens=60, temperature=0.0, stream=True)
    for _, _chunk in zip(range(5), stream):
        pass
    stream.close()
    for p in (PROMPTS[1], prompt, prompt[:-3]):
        assert spec(p, max_tokens=40, temperature=0.0)["choices"][0]["text"] == \
            plain(p, max_tokens=40, temperature=0.0)["choices"][0]["text"]


@pytest.mark.parametrize("arch", ARCHS)
def test_multi_turn_chat_reuses_prefix(arch, targets, heads):
    plain = plain_llm(targets[arch])
    spec = spec_llm(targets[arch], heads[arch], eagle3_draft_max=3)
    msgs_a = [{"role": "user", "content": "tell me about the cat"}]
    msgs_b = [{"role": "user", "content": "tell me about the cat"}]
    for turn in range(4):
        a = plain.create_chat_completion(msgs_a, max_tokens=24, temperature=0.0)["choices"][0]["message"]
        b = spec.create_chat_completion(msgs_b, max_tokens=24, temperature=0.0)["choices"][0]["message"]
        assert b["content"] == a["content"], turn
        msgs_a += [a, {"role": "user", "content": f"and then {turn}?"}]
        msgs_b += [b, {"role": "user", "content": f"and then {turn}?"}]


def outcome(llm, prompt: str, max_tokens) -> tuple:
    try:
        r = llm(prompt, max_tokens=max_tokens, temperature=0.0)
        return r["choices"][0]["text"], r["usage"]["total_tokens"]
    except Exception as e:  # compare failures too: the same error plain raises
        return type(e), None


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_context_limit(arch, targets, heads, references):
    """Generation runs to n_ctx: drafts never pass it, the last tokens are decoded plainly."""
    plain = plain_llm(targets[arch], n_ctx=256)
    spec = spec_llm(targets[arch], heads[arch], n_ctx=256, eagle3_draft_max=4)
    oracle.install(spec, list(references[arch].values()), error_rate=0.0)
    eos = plain.token_eos()
    prompt = next(p for p, ref in references[arch].items() if eos not in ref)
    plain_long = completion_tokens(plain, prompt, 256 - len(plain.tokenize(prompt.encode())))  # up to n_ctx
    spec._engine.drafter.references.append(plain_long)
    a = outcome(plain, prompt, None)  # max_tokens None: up to n_ctx
    b = outcome(spec, prompt, None)
    assert b == a
    specials = {i for i, t in enumerate(tm.tokenizer_keys()["tokenizer.ggml.token_type"]) if t == 3}
    if not specials & set(plain_long) and a[1] is not None:  # no end-of-generation token: runs into n_ctx
        assert a[1] == 256
    assert spec.n_tokens <= 256
    assert spec.speculative_stats()["accepted"] > 0
    # a request past n_ctx: whatever plain does, speculative does
    assert outcome(spec, prompt, 300) == outcome(plain, prompt, 300)


def test_echo_and_logprobs(targets, heads, references):
    plain = plain_llm(targets["llama"], logits_all=True)
    spec = spec_llm(targets["llama"], heads["llama"], logits_all=True, eagle3_draft_max=3)
    oracle.install(spec, list(references["llama"].values()), error_rate=0.3)
    a = plain(PROMPTS[0], max_tokens=20, temperature=0.0, echo=True, logprobs=3)["choices"][0]
    b = spec(PROMPTS[0], max_tokens=20, temperature=0.0, echo=True, logprobs=3)["choices"][0]
    assert b["text"] == a["text"]
    assert b["logprobs"]["tokens"] == a["logprobs"]["tokens"]
    assert b["logprobs"]["token_logprobs"][1:] == pytest.approx(a["logprobs"]["token_logprobs"][1:], abs=1e-4)
    assert spec.speculative_stats()["accepted"] > 0


def test_without_head_is_plain(targets):
    llm = Llama(str(targets["llama"]), n_ctx=128, verbose=False)
    assert not llm.is_speculative and llm.speculative_stats()["rounds"] == 0
    plain = llama_cpp.Llama(str(targets["llama"]), n_ctx=128, verbose=False)
    assert llm("the cat", max_tokens=20, temperature=0.0)["choices"][0]["text"] == \
        plain("the cat", max_tokens=20, temperature=0.0)["choices"][0]["text"]
