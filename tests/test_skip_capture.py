"""While the adaptive policy decodes plainly, only the plain steps whose features the next probe
reads are captured (the last OFF_WINDOW before it); the others capture nothing (the graph hook
selects no node). Probes still draft from true features of the positions right before them, and
output stays that of plain decoding through skipping, probing and speculating."""

from __future__ import annotations

from typing import Optional

import llama_cpp
import numpy as np
import pytest

import llama_eagle3.engine as engine_module
import oracle
from llama_eagle3 import Llama
from llama_eagle3.rounds import OFF_WINDOW
from llama_eagle3.policy import DraftPolicy

CPU = {1: 11.2e-3, 2: 17.5e-3, 5: 35.0e-3}  # compute-bound costs (test_policy.py): speculation stays off
PROMPT = "a"  # the tiny llama and qwen2 targets decode 300 tokens after it without an end of generation
GAP = 40  # tokens between probes after misses: 40 - OFF_WINDOW - 1 steps of each gap skip the capture


def make(target, head, **kw) -> Llama:
    return Llama(str(target), n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False, eagle3_head=str(head),
                 eagle3_p_min=0.0, **kw)


def plain_tokens(target, prompt: str, n: int) -> tuple[str, list[int]]:
    """Plain llama-cpp-python's greedy completion of n tokens, and the prompt's tokens followed by
    n greedy ones (past an end of generation too: the oracle's reference)."""
    plain = llama_cpp.Llama(str(target), n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False, flash_attn=True)
    choice = plain(prompt, max_tokens=n, temperature=0.0)["choices"][0]
    assert choice["finish_reason"] == "length", prompt
    tokens = plain.tokenize(prompt.encode())
    for t in plain.generate(tokens, temp=0.0):
        tokens.append(t)
        if len(tokens) == len(plain.tokenize(prompt.encode())) + n:
            break
    return choice["text"], tokens


def fix_costs(spec: Llama, gap: int = GAP) -> None:
    """This machine's timings replaced by CPU's, probes at most `gap` tokens apart."""
    policy = spec._policy

    def cpu(n: int) -> float:  # CPU's costs, interpolated between 2 and 5 rows
        return CPU.get(n, CPU[2] + (n - 2) * (CPU[5] - CPU[2]) / 3)
    for n in range(1, 6):  # every row count calibration measured
        for _ in range(8):
            policy.observe_decode(n, cpu(n))
    observe, probe = policy.observe_decode, policy.observe_probe
    policy.observe_decode = lambda n, seconds: observe(n, cpu(n))
    policy.observe_draft = lambda steps, seconds, asked=0: None
    policy.observe_probe = lambda hit, seconds: probe(hit, 0.2e-3)
    policy.costs.add_step(1.1e-3)
    policy.probes.set_gap(gap)
    policy.explorer.start = lambda *args: False  # no chain re-measured from plain decoding: speculation stays off
    policy.observe_overhead = lambda rows, seconds: None
    policy.probes.rechecking = False                 # past the start-up re-check (a probe every 4 tokens)
    spec._engine.fallback.consider = lambda p: None  # probes and captures alone (the fallback: test_fallback.py)
    spec._engine.ngram = None                  # (the tiny target repeats itself: test_ngram.py)


def log_decodes(spec: Llama) -> list[tuple[int, bool, Optional[bool]]]:
    """(rows, captured, whether the hook selected nodes: None on the built-in path) per target decode."""
    log: list[tuple[int, bool, Optional[bool]]] = []
    decode, hook = spec._engine.capture.decode, spec._engine.capture._hook

    def logged(llm, chunk, *args):
        out = decode(llm, chunk, *args)
        log.append((len(chunk), out is not None, None if hook is None else hook.enabled))
        return out
    spec._engine.capture.decode = logged
    return log


def test_plain_steps_to_probe_counts_the_plain_rounds_before_the_next_probe():
    p = DraftPolicy(4)
    for n, sec in CPU.items():
        for _ in range(4):
            p.observe_decode(n, sec)
    p.observe_draft(1, 1.1e-3)
    for i in range(400):
        if i in (100, 101, 250):
            p.observe_probe(i != 250, 0.5e-3)       # hits narrow the gap, a miss widens it
        ahead = p.plain_steps_to_probe()
        assert p.plain_steps_to_probe() == ahead    # no side effects
        falls = 0
        while not p.probe_due():
            falls += 1
        assert falls == ahead, i
    for _ in range(p.t1_refresh_every):
        p.observe_round(4, 4)
    assert p.decide() == (False, 0) and p.plain_steps_to_probe() == 0  # speculation only pauses


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # built-in extraction, graph hook
def test_plain_steps_far_from_a_probe_are_not_captured(arch, targets, heads):
    spec = make(targets[arch], heads[arch])
    fix_costs(spec)
    log = log_decodes(spec)
    spec(PROMPT, max_tokens=200, temperature=0.0)
    s = spec.speculative_stats()
    steps = [(captured, enabled) for rows, captured, enabled in log[1:]]  # after the prompt
    assert s["rounds"] == 0 and len(steps) == 199 <= s["plain_steps"]  # (a one-token prompt counts as one)
    assert s["probes"] >= 3
    captured = sum(c for c, _ in steps)
    # per probe: the OFF_WINDOW steps before it and its own; the rest skip (before: every step captured)
    assert captured <= (s["probes"] + 1) * (OFF_WINDOW + 1)
    assert s["uncaptured_steps"] == len(steps) - captured >= s["plain_steps"] // 2
    assert all(enabled in (None, captured) for captured, enabled in steps)  # the hook selects no node while skipping


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_probe_after_skipped_steps_drafts_from_the_positions_before_it(arch, targets, heads):
    """Each probe's head context is OFF_WINDOW or more positions right before it, with true
    features (compared with a run that captures every step); a probe after skipped steps has
    exactly OFF_WINDOW, all pending. Its hits are counted."""
    _, ref = plain_tokens(targets[arch], PROMPT, 160)
    spec = make(targets[arch], heads[arch])
    fix_costs(spec)
    spec._policy.choose = lambda: 0                    # speculation stays off, whatever the probes see
    spec._policy.explorer.start = lambda *args: False    # (chain-1 not re-measured either)
    orc = oracle.install(spec, [ref], error_rate=0.5)
    inner = orc.inner
    windows: list[tuple[int, int, int, np.ndarray]] = []  # (head_start, head_n, feature_end, pending rows)
    drafts: list[tuple[int, int]] = []                   # (position drafted, token)
    inner_propose, orc_propose = inner.propose, orc.propose

    def head_propose(input_ids, next_token, n_max, p_min):
        windows.append((inner.head_start, inner.head_n, inner.feature_end, np.concatenate(inner._pending)))
        return inner_propose(input_ids, next_token, n_max, p_min)

    def probe(input_ids, next_token, n_max, p_min):
        n = inner.feature_end
        out = orc_propose(input_ids, next_token, n_max, p_min)
        drafts.extend((n + 1, t) for t in out[:1])
        return out
    inner.propose, orc.propose = head_propose, probe
    spec(PROMPT, max_tokens=160, temperature=0.0)
    s = spec.speculative_stats()
    assert s["rounds"] == 0 and s["uncaptured_steps"] > 0 and s["probes"] == len(windows) == len(drafts) >= 3
    hits = sum(ref[pos] == t for pos, t in drafts)
    assert 0 < hits < len(drafts) and s["probe_hits"] == hits

    reference = make(targets[arch], heads[arch], eagle3_adaptive=False)
    rows: list[np.ndarray] = []
    observe = reference._engine.drafter.observe
    reference._engine.drafter.observe = lambda f, ids: (rows.append(f.copy()), observe(f, ids))[1]
    n_prompt = len(spec.tokenize(PROMPT.encode()))
    reference.eval(ref[:n_prompt])
    for t in ref[n_prompt : windows[-1][2]]:
        reference.eval([t])                              # one position per decode, as generation did
    every = np.concatenate(rows)
    after_skip = 0
    for start, head_n, end, pending in windows:
        assert end - start >= OFF_WINDOW and len(pending) == end - head_n
        np.testing.assert_allclose(pending, every[head_n:end], rtol=0, atol=1e-4)
        after_skip += (start, end - start) == (head_n, OFF_WINDOW)
    assert after_skip > 0


class Phased(oracle.OracleProposer):
    """Drafts the plain continuation, right at positions in [lo, hi) and wrong elsewhere."""

    def __init__(self, inner, references, lo: int, hi: int):
        super().__init__(inner, references, error_rate=1.0)
        self.lo, self.hi = lo, hi

    def propose(self, input_ids, next_token, n_max, p_min):
        self.error_rate = 0.0 if self.lo <= self.inner.feature_end < self.hi else 1.0
        return super().propose(input_ids, next_token, n_max, p_min)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_identical_through_skipping_probing_and_speculating(arch, targets, heads, monkeypatch):
    """Wrong drafts, then right ones (probes hit, speculation comes on), then wrong ones again:
    the plain steps of both wrong stretches skip the capture; output is plain decoding's, also
    for later requests that reuse the prefix."""
    want, ref = plain_tokens(targets[arch], PROMPT, 300)
    n_prompt = len(ref) - 300
    spec = make(targets[arch], heads[arch])
    fix_costs(spec, gap=24)
    orc = Phased(spec._engine.drafter, [ref], lo=n_prompt + 40, hi=n_prompt + 140)
    spec._engine.drafter = orc
    log = log_decodes(spec)
    inner, play = orc.inner, engine_module.chain_round

    def checked_round(engine, pending):
        out = play(engine, pending)
        assert inner.head_start <= inner.head_n <= inner.feature_end == spec.n_tokens
        return out
    monkeypatch.setattr(engine_module, "chain_round", checked_round)
    assert spec(PROMPT, max_tokens=300, temperature=0.0)["choices"][0]["text"] == want
    s = spec.speculative_stats()
    assert s["probes"] > 0 and s["probe_hits"] > 0 and s["rounds"] > 0 and s["accepted"] > 0, s
    kinds = "".join("v" if rows > 1 else "c" if captured else "s" for rows, captured, _ in log[1:])
    assert kinds.index("s") < kinds.index("v") < kinds.rindex("s"), kinds  # skip, speculate, skip again
    for prompt, n in ((PROMPT + want[:20], 60), (PROMPT, 120), ("the cat", 40)):  # prefix reuse, shorter
        plain = plain_tokens(targets[arch], prompt, n)[0]
        assert spec(prompt, max_tokens=n, temperature=0.0)["choices"][0]["text"] == plain, prompt


def test_a_tree_chosen_right_after_a_skipped_step_waits_for_a_captured_one(targets, heads):
    """A tree needs pending features to draft from; right after a skipped step there are none
    (an empty tree would put a row in no sequence: llama.cpp crashed). That round is a plain
    step that captures, and the trees follow."""
    want, _ = plain_tokens(targets["llama"], PROMPT, 120)
    spec = make(targets["llama"], heads["llama"], eagle3_tree_width=3, eagle3_tree_nodes=10)
    fix_costs(spec)
    log = log_decodes(spec)
    calls: list[int] = []
    spec._policy.decide = lambda: (calls.append(1), (True, 4) if len(calls) > 15 else (False, 0))[1]
    assert spec(PROMPT, max_tokens=120, temperature=0.0)["choices"][0]["text"] == want
    kinds = "".join("c" if captured else "s" for _, captured, _ in log[1:])
    assert kinds == "s" * 15 + "c", kinds             # the 16th step: no tree yet, captured
    assert spec.speculative_stats()["rounds"] > 0     # trees from then on (their decodes log nothing)
