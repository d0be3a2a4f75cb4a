"""The plain fallback (fallback.py): where speculation cannot pay, generation costs what plain
llama-cpp-python costs (no capture, no probes, its own eval and sampler) for a stretch, then
re-checks; output is plain decoding's either way."""

from __future__ import annotations

import llama_cpp
import pytest

from llama_eagle3 import Llama
from llama_eagle3.fallback import Fallback
from llama_eagle3.policy import DraftPolicy

import oracle
from test_policy import CPU, GPU, measured

PROMPTS = ["the cat sat", "in the beginning", "once more we"]


def calibrated(t: dict[int, float], c: float) -> DraftPolicy:
    p = DraftPolicy(4)
    measured(p, t, c, [])  # costs only: acceptance is measured afresh (recheck state)
    return p


def test_no_acceptance_pays_on_costs_where_even_right_drafts_lose():
    """Verifying 2 rows at 2.6x a plain token (this project's CPU on 2026-12-03, SmolLM2): no chain
    pays at any acceptance, so the fallback starts without measuring one."""
    p = calibrated({1: 7.8e-3, 2: 20.6e-3, 5: 40.5e-3}, 1.2e-3)
    assert p.breakeven_alpha() == float("inf")
    assert p.pays_nowhere(p.recheck_outcomes)


def test_optimistic_acceptance_below_break_even_falls_back_and_a_good_head_does_not():
    for hits, falls_back in ((3, True), (8, False)):
        p = calibrated(CPU, 1.1e-3)
        assert 0.5 < p.breakeven_alpha() < 1.0
        for i in range(7):
            p.observe_probe(i < hits, 0.2e-3)
        assert not p.pays_nowhere(p.recheck_outcomes)  # 7 outcomes: too few to judge
        p.observe_probe(hits >= 8, 0.2e-3)
        assert p.pays_nowhere(p.recheck_outcomes) is falls_back
    gpu = calibrated(GPU, 0.3e-3)                       # bandwidth-bound: 0.35 acceptance pays
    for i in range(8):
        gpu.observe_probe(i < 3, 0.2e-3)
    assert not gpu.pays_nowhere(gpu.recheck_outcomes)


def test_stretches_double_and_a_recheck_that_finds_a_gain_resets_them():
    p = calibrated(CPU, 1.1e-3)
    f = Fallback(first_stretch=8, max_stretch=32)
    lengths = []
    for _ in range(4):
        for _ in range(8):
            p.observe_probe(False, 0.2e-3)
            f.consider(p)
        lengths.append(f.left)
        while f.active:
            f.step(p)
        assert p.rechecking and p.first_outcomes() == 0  # acceptance is measured afresh after a stretch
    assert lengths == [8, 16, 32, 32]
    for _ in range(8):
        p.observe_probe(True, 0.2e-3)                    # the text became predictable
        f.consider(p)
    assert not f.active and f.stretch == 8


def test_verify_rounds_that_lose_to_plain_decoding_begin_a_stretch():
    """The model may rate chains above plain decoding while the rounds as run lose (catch-up,
    rebuilds, a lucky streak in the estimate): measured on this project's CPU, 11.2 ms per token
    against plain's 8.7. After a window of 32 rounds that lost by more than twice their standard
    error, a stretch begins; rounds that gain, or lose within their noise, start none, and each
    window is judged once."""
    t1 = CPU[1]
    for per_token, spread, falls_back in ((1.3 * t1, 0.1, True), (0.8 * t1, 0.1, False), (1.0 * t1, 0.6, False)):
        p = calibrated(CPU, 1.1e-3)
        for _ in range(20):
            p.observe_probe(True, 0.2e-3)                # the estimate says speculation pays
        f = Fallback()
        for i in range(2 * f.realized.window):
            assert not f.active
            tokens = 1 + i % 3
            f.realized.add(tokens, tokens * per_token * (1 + spread * (-1) ** i))
            f.consider(p)
            if f.active:
                break
        assert not p.pays_nowhere(p.recheck_outcomes) and f.active is falls_back, (per_token / t1, spread)
        assert i == f.realized.window - 1 or not falls_back


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_engine_hands_generation_to_plain_decoding_and_output_is_plain(targets, heads, temperature):
    """A drafter that is always wrong on compute-bound costs: after the first re-check the engine
    decodes in the fallback's stretch, where nothing is captured and no probe drafted, and every
    completion equals plain llama-cpp-python's (greedy; sampled, seed for seed)."""
    plain = llama_cpp.Llama(str(targets["llama"]), n_ctx=512, verbose=False, flash_attn=True, seed=5)
    spec = Llama(str(targets["llama"]), n_ctx=512, verbose=False, eagle3_head=str(heads["llama"]),
                 eagle3_p_min=0.0, seed=5)
    engine = spec._engine
    for n, sec in CPU.items():
        for _ in range(8):
            spec._policy.observe_decode(n, sec)
    observe = spec._policy.observe_decode  # this machine's timings replaced by CPU's
    spec._policy.observe_decode = lambda n, seconds: observe(n, CPU.get(n, CPU[2] + (n - 2) * (CPU[5] - CPU[2]) / 3))
    spec._policy.observe_draft = lambda steps, seconds, asked=0: None
    spec._policy.observe_overhead = lambda rows, seconds: None
    spec._policy.costs.add_step(1.1e-3)
    engine.fallback = Fallback(first_stretch=24, max_stretch=48)
    engine.ngram = None  # the tiny target repeats itself: n-gram copies would take rounds (test_ngram.py)
    orc = oracle.install(spec, [], error_rate=1.0)  # every draft wrong
    captured = []
    decode = engine.capture.decode
    engine.capture.decode = lambda llm, chunk, *a, **k: (captured.append(engine.fallback.active), decode(llm, chunk, *a, **k))[1]
    suspended = []
    suspend, resume = engine.capture.suspend, engine.capture.resume
    engine.capture.suspend = lambda: (suspended.append(True), suspend())[1]
    engine.capture.resume = lambda: (suspended.append(False), resume())[1]
    for p in PROMPTS:
        want = plain(p, max_tokens=100, temperature=temperature, seed=11)["choices"][0]["text"]
        orc.references.append(plain._input_ids.tolist())
        assert spec(p, max_tokens=100, temperature=temperature, seed=11)["choices"][0]["text"] == want
    s = spec.speculative_stats()
    assert s["fallback_steps"] > s["plain_steps"] and s["policy"]["fallback_stretches"] >= 2, s
    assert not any(captured)                         # no engine decode ran inside a stretch
    assert suspended and suspended[::2] == [True] * len(suspended[::2]) and not suspended[-1]
    # a stream closed inside a stretch leaves a consistent state: the next call is plain's again
    stream = spec(PROMPTS[0], max_tokens=60, temperature=0.0, stream=True)
    for _, _ in zip(range(5), stream):
        pass
    stream.close()
    want = plain(PROMPTS[1], max_tokens=60, temperature=0.0)["choices"][0]["text"]
    assert spec(PROMPTS[1], max_tokens=60, temperature=0.0)["choices"][0]["text"] == want
