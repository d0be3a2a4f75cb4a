"""The draft-length policy: the cost model's choices on compute- and bandwidth-bound costs, and
the engine in adaptive mode (identical output, speculation switched off and probed)."""

from __future__ import annotations


import llama_cpp

from llama_eagle3 import Llama
from llama_eagle3.calibration import calibrate
from llama_eagle3.policy import DraftPolicy

import oracle


def measured(policy: DraftPolicy, t: dict[int, float], c: float, alphas: list[float]) -> None:
    """Gives the policy these costs and acceptance estimates."""
    for n, sec in t.items():
        for _ in range(policy.warmup_rounds):
            policy.observe_decode(n, sec)
    policy.observe_draft(1, c)
    for ema, a in zip(policy._alpha, alphas):
        ema.add(a)


CPU = {1: 11.2e-3, 2: 17.5e-3, 5: 35.0e-3}   # this machine (SmolLM2): nearly compute-bound
GPU = {1: 6.0e-3, 2: 6.1e-3, 5: 6.4e-3}      # bandwidth-bound: more rows are almost free


def test_compute_bound_needs_high_acceptance():
    low, high = DraftPolicy(4), DraftPolicy(4)
    measured(low, CPU, 1.1e-3, [0.35, 0.4, 0.45, 0.45])
    measured(high, CPU, 1.1e-3, [0.9, 0.9, 0.9, 0.9])
    assert low.choose() == 0                # 1.35 tokens for 18.6 ms < 1 token per 11.2 ms
    assert high.choose() > 0
    # acceptance measured so far at positions 1-2 only: deeper ones are assumed as good, so they get tried
    partial = DraftPolicy(4)
    measured(partial, CPU, 1.1e-3, [0.95, 0.95])
    assert partial.choose() == 4
    assert high.expected_rate(high.choose()) > 1.1 * high.expected_rate(0)


def test_bandwidth_bound_drafts_deep_even_at_modest_acceptance():
    p = DraftPolicy(4)
    measured(p, GPU, 0.3e-3, [0.6, 0.7, 0.7, 0.7])
    assert p.choose() == 4


def test_unmeasured_rows_are_interpolated_and_warmup_order():
    p = DraftPolicy(4)
    assert p.choose() == 0                  # T(1) first
    p.observe_decode(1, 0.01)
    p.observe_decode(1, 0.01)
    assert p.choose() == 4                  # then T(k_max + 1)
    p.observe_decode(5, 0.03)
    assert abs(p.cost(3) - 0.02) < 1e-12
    assert DraftPolicy(4, adaptive=False).choose() == 4


def test_verify_cost_follows_the_single_row_cost_as_the_context_grows():
    """T(5) sampled early (short context, or start-up calibration) is scaled by today's T(1):
    speculation off means T(5) is not sampled again, yet longer contexts slow it down too."""
    p = DraftPolicy(4)
    measured(p, {1: 10e-3, 5: 35e-3}, 1e-3, [0.5] * 4)
    for _ in range(32):
        p.observe_decode(1, 16e-3)          # the context grew: a plain token now takes 16 ms
    assert abs(p.cost(5) - 56e-3) < 1e-9 and abs(p.cost(3) - 36e-3) < 1e-9
    fixed = DraftPolicy(4, adaptive=False)  # every round drafts: T(1) is never measured
    fixed.observe_decode(5, 35e-3)
    assert fixed.snapshot()["decode_ms"] == {5: 35.0}


def test_probes_back_off_where_no_plausible_acceptance_pays():
    """A run of hits brings probes closer, down to 2 tokens when a probe is cheap and to the probe
    budget's gap when it is not, also on costs where even near-perfect drafts barely beat plain
    decoding (where only a head right ~9 times in 10 pays, it must be noticed: the simulated bench
    found auto plain throughout at acceptance 0.9 and 0.95 while probes stayed 256 tokens apart).
    There, misses widen the gap up to hopeless_probe_every tokens instead of probe_every."""
    fast_cpu = {1: 6.0e-3, 2: 11.0e-3, 5: 22.0e-3}   # measured here on a faster host (SmolLM2)
    for t, c, probe, hopeless, n_due, cap in ((fast_cpu, 1.3e-3, 2e-3, True, 15, 256),
                                              (GPU, 0.3e-3, 0.2e-3, False, 128, 64),
                                              (GPU, 0.3e-3, 3e-3, False, 10, 64)):
        p = DraftPolicy(4)
        measured(p, t, c, [0.5, 0.5, 0.5, 0.5])
        assert (p.breakeven_alpha() > p.hopeless_alpha) is hopeless
        for _ in range(6):
            p.observe_probe(True, probe)    # a run of hits: the adaptive gap falls to 2
        due = [p.probe_due() for _ in range(256)]
        # 2 ms probes, 6 ms tokens, 2% budget: every 17 tokens; 3 ms probes on the GPU: every 25
        assert sum(due) == n_due
        for _ in range(8):
            p.observe_probe(False, probe)   # a run of misses: the gap widens to the cap
        due = [p.probe_due() for _ in range(4 * cap)]
        assert sum(due) in (3, 4)           # the first probe may come before the widened gap ends
    assert DraftPolicy(4).breakeven_alpha() is None  # nothing measured yet


def test_trees_win_where_verification_is_flat_and_lose_where_it_is_not():
    """Measured on this machine's SmolLM2 (tree of 12 nodes, width 3): T(13) ~ 38 ms, a tree
    round commits ~1.2x the chain's tokens; a GPU verifies 13 rows for about the price of 1."""
    cpu, gpu = ({**CPU, 13: 38.0e-3}, 3.0e-3), ({**GPU, 13: 6.8e-3}, 0.9e-3)
    for (t, tree_draft), want in ((cpu, False), (gpu, True)):
        p = DraftPolicy(4, tree_width=3, tree_nodes=12)
        measured(p, t, tree_draft / 4, [0.6, 0.5, 0.5, 0.5])
        assert p.choose_tree()  # warm-up: tree rounds are measured before the model decides
        for _ in range(p.warmup_rounds):
            p.observe_tree(round(1.2 * p.expected_tokens(4)), tree_draft)
        assert p.choose_tree() is want
    # verifying 13 rows measured here at ~8.7x one row: even a tree accepted to full depth every
    # round loses to plain decoding, so no tree round is tried
    slow = DraftPolicy(4, tree_width=3, tree_nodes=12)
    measured(slow, {**CPU, 13: 100.7e-3}, 0.77e-3, [0.6, 0.5, 0.5, 0.5])
    assert slow.tree_bound() < 1 / CPU[1] and not slow.choose_tree()
    assert DraftPolicy(4, adaptive=False, tree_width=2, tree_nodes=8).choose_tree()
    assert not DraftPolicy(4, adaptive=False).choose_tree()


def test_adaptive_engine_is_identical_and_turns_speculation_off(targets, heads):
    """A useless drafter on a tiny target: the policy stops drafting (probing now and then), and
    an oracle drafter keeps it on; output equals plain decoding either way."""
    plain = llama_cpp.Llama(str(targets["llama"]), n_ctx=512, verbose=False, flash_attn=True)
    spec = Llama(str(targets["llama"]), n_ctx=512, verbose=False, eagle3_head=str(heads["llama"]), eagle3_p_min=0.0)
    # fix the costs so the test does not depend on this machine's timings: compute-bound
    for n, sec in CPU.items():
        for _ in range(8):
            spec._policy.observe_decode(n, sec)
    observe = spec._policy.observe_decode  # the machine's timings replaced by CPU's (interpolated)
    spec._policy.observe_decode = lambda n, seconds: observe(n, CPU.get(n, CPU[2] + (n - 2) * (CPU[5] - CPU[2]) / 3))
    spec._policy.observe_draft = lambda steps, seconds: None
    probe = spec._policy.observe_probe  # a probe's time sets the gap to the next: fixed too
    spec._policy.observe_probe = lambda hit, seconds: probe(hit, 0.2e-3)
    spec._policy._c.add(1.1e-3)
    spec._policy.probe_every = spec._policy._probe_gap = 8  # short texts: probe often
    prompts = ["the cat sat", "in the beginning", "once more we"]
    orc = oracle.install(spec, [], error_rate=1.0)  # every draft wrong
    want = []
    for p in prompts:
        want.append(plain(p, max_tokens=120, temperature=0.0)["choices"][0]["text"])
        orc.references.append(plain._input_ids.tolist())  # prompt + completion, as plain decoded it
    for p, w in zip(prompts, want):
        assert spec(p, max_tokens=120, temperature=0.0)["choices"][0]["text"] == w
    s = spec.speculative_stats()
    assert s["plain_steps"] > 3 * s["rounds"], s
    assert s["probes"] > 0 and s["probe_hits"] == 0
    assert s["policy"]["alpha"][0] < 0.2

    spec.reset_speculative_stats()
    orc.error_rate = 0.0  # perfect drafts: speculation comes back (probes see hits) and stays on
    for p, w in zip(prompts, want):
        assert spec(p, max_tokens=120, temperature=0.0)["choices"][0]["text"] == w
    s = spec.speculative_stats()
    assert s["rounds"] > s["plain_steps"] and s["mean_accepted_length"] > 3, str(s)


def test_decision_is_cached_until_a_measurement_changes_it():
    """decide() is recomputed after a verify round, a probe, a draft or a multi-row decode, and
    after REDECIDE_EVERY single-row decodes (plain steps): not on every plain step."""
    p = DraftPolicy(4)
    measured(p, CPU, 1.1e-3, [0.35, 0.4, 0.45, 0.45])
    assert p.decide() == (False, 0)
    for _ in range(20):
        p.observe_round(4, 4)               # perfect drafts: speculation pays
    assert p.decide()[1] > 0
    for _ in range(40):
        p.observe_round(4, 0)
    assert p.decide() == (False, 0)
    for a in p._alpha:
        a.value = 0.95                      # changed behind its back: the cached answer stands ...
    for _ in range(DraftPolicy.REDECIDE_EVERY - 1):
        p.observe_decode(1, CPU[1])
        assert p.decide() == (False, 0)
    p.observe_decode(1, CPU[1])             # ... until the next recomputation
    assert p.decide()[1] > 0


def test_first_decode_after_a_shape_change_is_left_out():
    """An offloaded backend rebuilds its graph when the row count changes (CUDA graphs): that
    decode is no steady-state sample of either shape, once the shape has two samples."""
    p = DraftPolicy(4, graph_rebuilds=True)
    for n in (1, 1, 5, 5):
        p.observe_decode(n, 1e-3 * n)       # warm-up: the first samples count whatever came before
    assert (p._n(1), p._n(5)) == (2, 2)
    p.observe_decode(1, 9e-3)               # right after the 5-row decodes: a rebuild, left out
    p.observe_decode(1, 1e-3)
    assert p._n(1) == 3 and p.cost(1) == 1e-3
    cpu = DraftPolicy(4)                    # no graph to rebuild: every decode is a sample
    for n in (1, 1, 5, 5, 1):
        cpu.observe_decode(n, 1e-3 * n)
    assert cpu._n(1) == 3


def test_a_wrong_start_up_t1_is_corrected_while_speculating():
    """Start-up measured T(1) 3x too slow (as interleaved shapes did on an H200): speculation
    looks worth it and stays on, so T(1) would never be sampled again. Every t1_refresh_every
    rounds a few plain steps re-measure it, and the policy then sees plain decoding is faster."""
    p = DraftPolicy(4, graph_rebuilds=True)
    measured(p, {1: 3.5e-3, 5: 1.55e-3}, 0.25e-3, [0.3] * 4)
    true_t1, true_t5 = 1.2e-3, 1.55e-3
    plain_at = []
    for i in range(p.t1_refresh_every + 40):
        tree, k = p.decide()
        if k == 0:
            plain_at.append(i)
            p.observe_decode(1, true_t1)
        else:
            p.observe_decode(5, true_t5)
            p.observe_round(4, 1 if i % 5 == 0 else 0)  # alpha_1 ~0.2: plain is faster at the true costs
    assert plain_at[0] == p.t1_refresh_every                 # speculated until the refresh was due
    assert abs(p.cost(1) - true_t1) < 1e-12                  # the refresh's samples outvote start-up's
    assert plain_at == list(range(p.t1_refresh_every, p.t1_refresh_every + 40))  # then plain for good


def test_calibration_decodes_each_shape_in_a_row(targets, heads):
    """Start-up calibration runs each row count's decodes back to back, T(1) first (a GPU
    backend would otherwise rebuild its graph on every decode and time the rebuilds)."""
    spec = Llama(str(targets["llama"]), n_ctx=256, verbose=False, eagle3_head=str(heads["llama"]),
                 eagle3_draft_max=4, eagle3_tree_width=3, eagle3_tree_nodes=12)
    seen: list = []
    decode, decode_tree = spec._capture.decode, spec._decode_tree
    spec._capture.decode = lambda llm, chunk, *a: (seen.append(len(chunk)), decode(llm, chunk, *a))[1]
    spec._decode_tree = lambda tokens, pos, seqs: (seen.append(("tree", len(tokens), len(seqs[0]))),
                                                   decode_tree(tokens, pos, seqs))[1]
    calibrate(spec, warmup=2, repeats=3)
    # the tree row count is timed on a stand-in tree: 12 nodes, 3 under the first of each level, 9 leaves
    assert seen == [1] * 5 + [2] * 5 + [5] * 5 + [("tree", 13, 9)] * 5
    assert spec.n_tokens == 0
    assert spec("the cat", max_tokens=8, temperature=0.0)["usage"]["completion_tokens"] == 8  # caches emptied
