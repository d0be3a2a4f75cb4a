"""The target's own NextN (MTP) layer as a drafter (python/llama_eagle3/mtp.py):
Llama(model, eagle3_head="mtp") on a tiny synthetic glm4moe target with one NextN layer
(synthetic_mtp.py) gives plain llama-cpp-python's output (greedy, and sampling seed for seed),
its drafts are accepted and rejected at every position, rollbacks keep the MTP context in step,
and targets without NextN layers are refused with a ValueError."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest

from llama_eagle3 import Llama
from llama_eagle3.mtp import MtpDrafter, check_mtp_target
from llama_eagle3 import synthetic_mtp
from llama_eagle3.synthetic_mtp import write_tiny_mtp_target

PROMPTS = ["hello world, this is a test", "the cat", "in the beginning of the"]


@pytest.fixture(scope="module")
def mtp_target(tmp_path_factory) -> Path:
    return write_tiny_mtp_target(tmp_path_factory.mktemp("mtp") / "glm4moe-mtp.gguf")


def plain_llm(target: Path, **kw) -> llama_cpp.Llama:
    return llama_cpp.Llama(str(target), n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False, flash_attn=True, **kw)


def spec_llm(target: Path, **kw) -> Llama:
    base = dict(n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False, eagle3_head="mtp", eagle3_draft_max=4,
                eagle3_adaptive=False, eagle3_p_min=0.0, eagle3_ngram=False)
    return Llama(str(target), **{**base, **kw})


def text(llm: llama_cpp.Llama, prompt: str, n: int, **kw) -> str:
    return llm(prompt, max_tokens=n, **{"temperature": 0.0, **kw})["choices"][0]["text"]


def test_greedy_identical_and_acceptance_per_position(mtp_target):
    plain = plain_llm(mtp_target)
    spec = spec_llm(mtp_target)
    assert isinstance(spec._engine.drafter, MtpDrafter)
    for prompt in PROMPTS:
        for n in (1, 7, 60):
            assert text(spec, prompt, n) == text(plain, prompt, n), (prompt, n)
    stats = spec.speculative_stats()
    mine = stats["drafters"]["mtp"]
    assert set(stats["drafters"]) == {"mtp"} and mine["rounds"] == stats["rounds"] > 0
    assert len(mine["acceptance_at"]) == 4
    # the tiny target's NextN layer is right often but not always, at every draft position
    assert 0 < stats["accepted"] < stats["drafted"]
    assert all(0 < a < 1 for a in mine["acceptance_at"][:2]) and mine["accepted_at"][3] > 0


def test_sampling_seed_for_seed_and_adaptive(mtp_target):
    fixed = spec_llm(mtp_target)
    adaptive = spec_llm(mtp_target, eagle3_adaptive=True, eagle3_p_min=0.3, eagle3_ngram=True)
    assert not adaptive._policy.costs.per_proposal  # a chain step costs one MTP decode
    assert adaptive.speculative_stats()["policy"]["draft_step_ms"] > 0
    for seed in (1, 2, 3):
        want = text(plain_llm(mtp_target, seed=seed), "the cat", 40, temperature=0.8, seed=seed)
        for llm in (fixed, adaptive):
            assert text(llm, "the cat", 40, temperature=0.8, seed=seed) == want
    assert fixed.speculative_stats()["drafters"]["mtp"]["rounds"] > 0


def test_rollback_and_state_changes(mtp_target):
    """prefix reuse / load_state / reset / truncate keep the MTP context in step with the target."""
    plain = plain_llm(mtp_target)
    spec = spec_llm(mtp_target, eagle3_draft_max=6)
    d = spec._engine.drafter
    long = "it is what it is, or " * 4
    a = text(plain, long, 40)
    assert text(spec, long, 40) == a
    state = spec.save_state()
    assert text(spec, long + "x", 20) == text(plain, long + "x", 20)  # prefix reuse: truncate
    spec.load_state(state)
    assert d.feature_end == spec.n_tokens
    spec.reset()
    assert (d.head_start, d.head_n, d.n_pending) == (0, 0, 0)
    assert text(spec, long, 40) == a
    # a rollback into the consumed pairs drops their cells and re-derives the last kept position
    n = d.feature_end
    d.propose(spec.input_ids, int(spec.input_ids[n - 1]), 1, 0.0)  # consumes every pending pair
    assert d.head_n == n and d.n_pending == 0
    assert llama_cpp.llama_memory_seq_pos_max(d._mem, 0) == n  # the pair of f[n-1] sits at n
    assert d.truncate(n - 3) == n - 4 and d.head_n == n - 4
    assert llama_cpp.llama_memory_seq_pos_max(d._mem, 0) == n - 4
    assert d.truncate(n + 10) == n - 4  # never past its states


def test_time_step_leaves_the_context_empty(mtp_target):
    spec = spec_llm(mtp_target)
    d = spec._engine.drafter
    steps = d.n_steps
    assert d.time_step(3) > 0 and d.n_steps == steps + 2  # the first draft comes with the catch-up decode
    assert (d.head_n, d.n_pending) == (0, 0)
    assert llama_cpp.llama_memory_seq_pos_max(d._mem, 0) == -1


def test_a_target_without_nextn_layers_is_refused(targets, mtp_target, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="no NextN"):
        Llama(str(targets["llama"]), n_ctx=256, verbose=False, eagle3_head="mtp")
    assert check_mtp_target(mtp_target) == "glm4moe"
    # a trunk-only file: the metadata declares a NextN layer, its tensors are not there
    plan = synthetic_mtp.tensor_plan
    monkeypatch.setattr(synthetic_mtp, "tensor_plan", lambda s: (t for t in plan(s) if ".nextn." not in t[0]))
    synthetic_mtp.write_tiny_mtp_target(tmp_path / "trunk.gguf")
    with pytest.raises(ValueError, match="trunk-only"):
        Llama(str(tmp_path / "trunk.gguf"), n_ctx=256, verbose=False, eagle3_head="mtp")


def test_tree_width_refused(mtp_target):
    with pytest.raises(ValueError, match="chains only"):
        spec_llm(mtp_target, eagle3_tree_width=2)


def test_synthetic_mtp_shape_benches(tmp_path, monkeypatch):
    """bench --synthetic tiny-mtp: the random-block writer's target drafts with its own NextN layer
    next to plain decoding, with predicted and measured rates."""
    from llama_eagle3.bench_simulated import simulated_bench
    from llama_eagle3.synthetic_mtp import ensure_mtp

    target = ensure_mtp("tiny-mtp", "Q8_0", tmp_path, log=lambda *a: None)
    assert ensure_mtp("tiny-mtp", "Q8_0", tmp_path, log=lambda *a: None) == target  # written once
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hello there"}\n')
    s = simulated_bench(str(target), "mtp", prompts, [[0.6], [0.8]], max_tokens=8, draft_max=2, threads=1,
                        log=lambda *a: None)
    for label in ("0.6", "0.8"):
        a = s["simulated"][label]
        assert set(a["tokens_per_second"]) == {"plain", "chain-1", "chain-2", "auto"}
        assert a["predicted_tokens_per_second"]["chain-2"] > 0 and a["costs_ms"]["draft_step"] > 0
    with pytest.raises(ValueError, match="tiny-mtp"):
        ensure_mtp("glm-9b-mtp")


def test_split_gguf_with_the_nextn_layer_in_a_later_file(tmp_path):
    first = write_tiny_mtp_target(tmp_path / "split.gguf", split_max_tensors=30)
    assert first.name == "split-00001-of-00002.gguf"
    assert check_mtp_target(first) == "glm4moe"  # its NextN tensors are in the second file
    spec = spec_llm(first)
    assert text(spec, "the cat", 20) == text(plain_llm(first), "the cat", 20)
    assert spec.speculative_stats()["drafters"]["mtp"]["accepted"] > 0


def test_drafters_command_says_what_a_target_offers(mtp_target, targets, heads, capsys):
    from llama_eagle3.cli import main

    main(["drafters", "--model", str(mtp_target)])
    out = capsys.readouterr().out
    assert 'its own NextN (MTP) layers: yes, glm4moe (eagle3_head="mtp")' in out and "n-gram" in out
    main(["drafters", "--model", str(targets["llama"]), "--head", str(heads["llama"])])
    out = capsys.readouterr().out
    assert "its own NextN (MTP) layers: no: it has no NextN" in out and ": EAGLE-3" in out


def test_an_architecture_without_an_mtp_graph_is_refused(tmp_path):
    """NextN tensors in an architecture llama.cpp has no MTP graph for: refused from the header,
    before llama.cpp reads the file."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(tmp_path / "exaone4.gguf"), "exaone4")
    w.add_uint32("exaone4.block_count", 2)
    w.add_uint32("exaone4.nextn_predict_layers", 1)
    w.add_tensor("blk.1.nextn.eh_proj.weight", np.zeros((8, 16), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="no MTP graph for architecture 'exaone4'"):
        Llama(str(tmp_path / "exaone4.gguf"), eagle3_head="mtp")
