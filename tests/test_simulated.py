"""The acceptance simulator (bench --simulate-acceptance) and the synthetic real-size models
(bench --synthetic): acceptance drawn as asked, the engine's rounds driven by it, the summary
labelled simulated, and synthetic targets that load with finite logits."""

from __future__ import annotations

import json
import os

import gguf
import llama_cpp
import numpy as np
import pytest

from llama_eagle3 import Llama, synthetic
from llama_eagle3.bench_simulated import (Timing, _upstream, parse_acceptance, predicted_rate, simulated_bench,
                                          timed_generation)
from llama_eagle3.fallback import Fallback
from llama_eagle3.policy import DraftPolicy
from llama_eagle3.stats import SpeculativeStats
from llama_eagle3.verifier import SimulatedAcceptance


def _rows_sampled(sim: SimulatedAcceptance, drafts: list[int]) -> tuple[list[int], list[int]]:
    rows: list[int] = []

    def sample_row(i: int) -> int:
        rows.append(i)
        return 1000 + i
    return sim.accept_chain(sample_row, drafts), rows


def test_certain_acceptance_commits_every_draft_and_the_bonus_sample():
    committed, rows = _rows_sampled(SimulatedAcceptance([1.0]), [5, 6, 7])
    assert committed == [5, 6, 7, 1003] and rows == [0, 1, 2, 3]


def test_no_acceptance_commits_the_first_rows_sample():
    committed, rows = _rows_sampled(SimulatedAcceptance([0.0]), [5, 6, 7])
    assert committed == [1000] and rows == [0]


def test_per_position_probabilities_apply_by_position():
    committed, _ = _rows_sampled(SimulatedAcceptance([1.0, 0.0]), [5, 6, 7])
    assert committed == [5, 1001]


def test_drawn_acceptance_matches_its_probabilities():
    sim = SimulatedAcceptance([0.8, 0.6, 0.5], seed=3)
    n = 20000
    accepted = np.zeros(4)
    for _ in range(n):
        committed, _ = _rows_sampled(sim, [5, 6, 7, 8])
        accepted[: len(committed) - 1] += 1
    # P(position i accepted) = prod of the first i probabilities; the last value repeats
    want = np.cumprod([0.8, 0.6, 0.5, 0.5])
    assert np.abs(accepted / n - want).max() < 0.015
    assert sim.expected_tokens(4) == pytest.approx(1 + want.sum())


def test_acceptance_specs_parse_and_bad_ones_are_named():
    assert parse_acceptance("0.5,0.7") == [[0.5], [0.7]]
    assert parse_acceptance("0.73/0.71/0.67, 0.9") == [[0.73, 0.71, 0.67], [0.9]]
    with pytest.raises(ValueError, match="probabilities"):
        parse_acceptance("0.5,high")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        parse_acceptance("1.5")


def test_predicted_rate_is_the_cost_model():
    sim = SimulatedAcceptance([0.5])
    # E(2) = 1.75 tokens per round of T(3) + the drafting time (2 head steps of 5 ms) = 30 + 10 ms
    assert predicted_rate({1: 10.0, 3: 30.0}, 10.0, sim, 2) == pytest.approx(1e3 * 1.75 / 40.0)
    assert predicted_rate({1: 10.0}, 5.0, sim, 0) == pytest.approx(100.0)
    assert predicted_rate({1: 10.0}, None, sim, 2) is None


@pytest.mark.parametrize("alpha,mal", [(1.0, 4.0), (0.0, 1.0)])
def test_engine_rounds_follow_the_simulated_acceptance(targets, heads, alpha, mal):
    llm = Llama(str(targets["llama"]), eagle3_head=str(heads["llama"]), n_ctx=512, verbose=False,
                eagle3_draft_max=3, eagle3_p_min=0.0, eagle3_adaptive=False)
    stats = SpeculativeStats()
    llm._bench_configure(DraftPolicy(3, adaptive=False), SimulatedAcceptance([alpha]), stats, Fallback())
    llm.create_completion("the cat", max_tokens=40, temperature=0.0)
    s = stats.as_dict()
    assert s["rounds"] > 5 and s["mean_accepted_length"] == mal


def test_simulation_is_refused_for_trees(targets, heads):
    llm = Llama(str(targets["llama"]), eagle3_head=str(heads["llama"]), n_ctx=512, verbose=False,
                eagle3_draft_max=3, eagle3_tree_width=2)
    with pytest.raises(ValueError, match="chains only"):
        llm._bench_configure(DraftPolicy(3, adaptive=False), SimulatedAcceptance([0.5]), SpeculativeStats(), Fallback())


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory):
    return synthetic.ensure("tiny", "Q4_K_M", tmp_path_factory.mktemp("synthetic"), log=lambda *a: None)


def test_simulated_bench_summary(tiny_synthetic, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["hello there", "write a poem"]))
    target, head = tiny_synthetic.target, tiny_synthetic.head
    s = simulated_bench(str(target), str(head), prompts, [[1.0], [0.0]], max_tokens=24, draft_max=2, threads=1,
                        log=lambda *a: None)
    assert set(s["simulated"]) == {"1", "0"}
    for label, a in s["simulated"].items():
        assert a["simulated"] is True
        assert set(a["tokens_per_second"]) == {"plain", "chain-1", "chain-2", "auto"}
        assert a["best_fixed"] in ("plain", "chain-1", "chain-2")
        assert a["auto_vs_best_fixed"] == pytest.approx(a["tokens_per_second"]["auto"]
                                                        / a["tokens_per_second"][a["best_fixed"]])
    assert s["simulated"]["1"]["mean_accepted_length"]["chain-2"] == 3.0
    assert s["simulated"]["0"]["mean_accepted_length"]["chain-2"] == 1.0
    json.dumps(s)


def test_simulated_bench_runs_dflash_next_to_eagle3(tiny_synthetic, tmp_path):
    """--synthetic writes a DFlash head beside the target (tiny: 2 layers, 3 taps); the simulated
    bench runs its blocks of 1..K drafts and its auto next to EAGLE-3's, each auto compared with
    its own drafter's best fixed shape; a DFlash proposal is priced per proposal and runs one
    block decode whatever its length."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hello there"}))
    f = tiny_synthetic
    s = simulated_bench(str(f.target), str(f.head), prompts, [[1.0]], max_tokens=24, draft_max=2, threads=1,
                        dflash_head=str(f.dflash), log=lambda *a: None)
    a = s["simulated"]["1"]
    assert s["methods"] == ["plain", "chain-1", "chain-2", "auto", "dflash-1", "dflash-2", "dflash-auto"]
    assert a["mean_accepted_length"]["dflash-2"] == 3.0 and a["mean_accepted_length"]["dflash-1"] == 2.0
    assert a["best_fixed_per_drafter"]["dflash-auto"] in ("plain", "dflash-1", "dflash-2")
    assert a["best_fixed_per_drafter"]["auto"] in ("plain", "chain-1", "chain-2")
    dflash = a["drafter_costs_ms"]["dflash-auto"]
    assert set(dflash["proposal"]) == {1, 2} and a["drafter_costs_ms"]["auto"]["proposal"] is None
    assert a["auto_policy"]["dflash-auto"]["draft_priced_per"] == "proposal"
    assert a["predicted_tokens_per_second"]["dflash-2"] == pytest.approx(
        3e3 / (dflash["decode"][3] + dflash["proposal"][2]))
    json.dumps(s)


class _ScriptedLlama:
    """generate() yields `n` tokens; the prompt's prefill advances the clock by 10 s, each later
    token by 1 s."""

    def __init__(self, clock: list[float], n: int):
        self.clock, self.n = clock, n
        self._model = type("M", (), {"vocab": None})()

    def reset(self) -> None:
        pass

    def generate(self, tokens, temp, reset):
        self.clock[0] += 10.0
        for i in range(self.n):
            if i:
                self.clock[0] += 1.0
            yield 5


def test_decoding_is_timed_apart_from_the_prompt(monkeypatch):
    monkeypatch.setattr(llama_cpp, "llama_vocab_is_eog", lambda vocab, token: False)
    clock = [0.0]
    t = timed_generation(_ScriptedLlama(clock, 9), [1, 2, 3], max_tokens=5, clock=lambda: clock[0])
    assert (t.n, t.decoded, t.prefill, t.decode) == (5, 4, 10.0, 4.0)
    assert t.decode_rate == 1.0 and t.end_to_end_rate == pytest.approx(5 / 14)
    both = t + t
    assert both.decode_rate == 1.0 and both.n == 10


def test_upstream_is_projected_from_its_cost_per_round(monkeypatch, tmp_path):
    from llama_eagle3 import bench_simulated

    class FakeUpstream:
        def __init__(self, *args, **kwargs):
            assert kwargs["p_min"] == 0.0  # every round drafts n-max
            self.k = args[3]

        def run(self, messages, max_tokens, temperature, seed):
            return "", 10, 3.0, {"n_drafted": 10 * self.k, "n_accept": 0, "decode_seconds": 1.0}  # 10 rounds

    monkeypatch.setattr(bench_simulated, "Upstream", FakeUpstream)
    out = _upstream(tmp_path, "m", "h", [[{"role": "user", "content": "x"}]], 10, 2, 512, 0, (2,), None,
                    {"0.5": {"acceptance": [0.5]}})
    u = out["upstream-n2"]
    assert u["measured_tokens_per_second"] == 10.0 and u["real_acceptance"] == 0.0
    assert u["projected_tokens_per_second"]["0.5"] == pytest.approx(10.0 * 1.75)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0", "Q4_K", "Q6_K"])
def test_random_blocks_dequantize_to_small_centred_weights(qtype):
    b = synthetic.random_blocks(qtype, 32, 512, np.random.default_rng(0))
    w = gguf.quants.dequantize(b, gguf.GGMLQuantizationType[qtype])
    assert w.shape == (32, 512) and np.isfinite(w).all()
    assert 0.015 < w.std() < 0.03 and abs(w.mean()) < 0.005


def test_synthetic_target_loads_and_never_ends_early(tiny_synthetic):
    target, head = tiny_synthetic.target, tiny_synthetic.head
    llm = llama_cpp.Llama(str(target), n_ctx=256, verbose=False, logits_all=True)
    llm.eval(llm.tokenize(b"hello world"))
    logits = llm.scores[: llm.n_tokens]
    assert np.isfinite(logits).all() and logits.std() > 0.05
    assert (logits[:, -3:] == 0).all()  # special tokens (end of generation): exactly 0, never the argmax
    assert (logits.max(axis=1) > 0).all()


def test_synthetic_models_are_written_once(tiny_synthetic):
    files = [tiny_synthetic.target, tiny_synthetic.head, tiny_synthetic.dflash]
    before = [os.stat(f).st_mtime_ns for f in files]
    again = synthetic.ensure("tiny", "Q4_K_M", files[0].parent.parent, log=lambda *a: None)
    assert again == tiny_synthetic
    assert [os.stat(f).st_mtime_ns for f in files] == before


def test_unknown_synthetic_shape_is_named():
    with pytest.raises(ValueError, match="llama-8b"):
        synthetic.ensure("llama-9b")
