"""DFlash heads at runtime (python/llama_eagle3/dflash.py): Llama(eagle3_head=<dflash GGUF or HF dir>)
drafts one block per round in ONE head decode, output identical to plain llama-cpp-python (greedy,
and sampling seed for seed), rollbacks keep the head's KV in step, bad heads are refused with a
ValueError before llama.cpp sees them, and the policy prices a DFlash proposal per proposal."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

import oracle
import tiny_models as tm
from eagle3_convert.cli import convert
from eagle3_convert.dflash_gguf import write_dflash_gguf
from eagle3_convert.dflash_layouts import load_dflash_head
from eagle3_convert.random_dflash import SMOLLM2_135M_DFLASH, DFlashShape, write_random_dflash_head
from eagle3_convert.target import load_target
from llama_eagle3 import Llama
from llama_eagle3.costs import CostTable
from llama_eagle3.dflash import DFlashDrafter
from llama_eagle3.policy import DraftPolicy

BLOCK = 8
# z-lab ids (OUTPUT of layer i) -> llama.cpp ids (input of layer i + 1): llama 4 taps [2, 3, 5, 7]
# (built-in extraction), qwen2 5 taps [1, 2, 4, 6, 7] (graph hook)
TAPS = {"llama": (1, 2, 4, 6), "qwen2": (0, 1, 3, 5, 6)}
PROMPTS = ["the cat", "in the beginning of the", "it is what it is, or"]


def quiet(*_: object) -> None:
    pass


def tiny_shape(n_vocab: int, taps: tuple[int, ...], **kw) -> DFlashShape:
    base = dict(hidden=tm.H, n_layers=2, n_head=tm.N_HEAD, n_kv_head=tm.N_KV, head_dim=tm.HEAD_DIM, intermediate=96,
                vocab=n_vocab, target_layer_ids=taps, num_target_layers=tm.N_LAYER, block_size=BLOCK,
                mask_token_id=n_vocab - 1, rope_theta=10000.0, max_position_embeddings=tm.CTX)
    return DFlashShape(**{**base, **kw})


@pytest.fixture(scope="module")
def dflash_heads(tmp_path_factory, targets, n_vocab) -> dict[str, tuple[Path, Path]]:
    """(HF directory, converted f32 GGUF) of a random z-lab DFlash head per target architecture."""
    d = tmp_path_factory.mktemp("dflash-runtime")
    out = {}
    for arch, taps in TAPS.items():
        hf = write_random_dflash_head(d / f"hf-{arch}", tiny_shape(n_vocab, taps), seed=3)
        convert(hf, str(targets[arch]), d / f"{arch}.gguf", "f32", log=quiet)
        out[arch] = (hf, d / f"{arch}.gguf")
    return out


def plain_llm(target: Path, **kw) -> llama_cpp.Llama:
    return llama_cpp.Llama(str(target), n_ctx=512, n_threads=1, verbose=False, flash_attn=True, **kw)


def spec_llm(target: Path, head: Path, **kw) -> Llama:
    kw = {"eagle3_p_min": 0.0, "eagle3_adaptive": False, "eagle3_ngram": False, "eagle3_draft_max": 4, **kw}
    return Llama(str(target), n_ctx=512, n_threads=1, verbose=False, eagle3_head=str(head), **kw)


def greedy_tokens(llm: llama_cpp.Llama, prompt: str, n: int) -> list[int]:
    toks = llm.tokenize(prompt.encode())
    gen = llm.generate(toks, temp=0.0) if isinstance(llm, Llama) else llama_cpp.Llama.generate(llm, toks, temp=0.0)
    out = []
    for t in gen:
        out.append(int(t))
        if len(out) == n:
            break
    return toks + out


def _address(handle: object) -> object:
    return getattr(handle, "value", handle)


class HeadCalls:
    """Counts llama_process calls on the head's context per propose() and checks the head's KV after
    each: context rows [head_start, head_n) only (the block's cells removed)."""

    def __init__(self, monkeypatch, drafter: DFlashDrafter):
        self.drafter, self.calls, self.proposals = drafter, 0, []
        inner_process, inner_propose = llama_cpp.llama_process, drafter.propose

        def process(ctx, kind, batch):
            if _address(ctx) == _address(drafter._ctx):
                self.calls += 1
            return inner_process(ctx, kind, batch)

        def propose(input_ids, next_token, n_max, p_min):
            before, pending = self.calls, drafter.n_pending
            drafts = inner_propose(input_ids, next_token, n_max, p_min)
            injections = math.ceil(pending / drafter.n_ubatch)
            self.proposals.append((self.calls - before, injections, len(drafts)))
            pos_max = llama_cpp.llama_memory_seq_pos_max(drafter._mem, 0)
            assert pos_max == (drafter.head_n - 1 if drafter.head_n > drafter.head_start else -1)
            assert drafter.n_pending == 0 and drafter.feature_end == drafter.head_n
            return drafts

        monkeypatch.setattr(llama_cpp, "llama_process", process)
        drafter.propose = propose  # type: ignore[method-assign]


@pytest.mark.parametrize("arch", list(TAPS))
@pytest.mark.parametrize("drafter", ["head", "oracle"])
def test_greedy_identical_one_decode_per_block(arch, drafter, targets, dflash_heads, monkeypatch):
    plain = plain_llm(targets[arch])
    refs = {p: greedy_tokens(plain, p, 60) for p in PROMPTS}
    spec = spec_llm(targets[arch], dflash_heads[arch][1])
    dflash = spec._engine.drafter
    assert isinstance(dflash, DFlashDrafter) and dflash.name == "dflash"
    assert spec._engine.capture.layer_ids == [i + 1 for i in TAPS[arch]]
    counter = HeadCalls(monkeypatch, dflash)
    if drafter == "oracle":  # the known continuation with mistakes: accepted blocks and rollbacks
        oracle.install(spec, list(refs.values()), error_rate=0.2)
    for prompt, ref in refs.items():
        for n in (1, 9, 60):
            assert greedy_tokens(spec, prompt, n) == ref[: len(ref) - 60 + n], (prompt, n)
        a = plain(prompt, max_tokens=25, temperature=0.0)
        b = spec(prompt, max_tokens=25, temperature=0.0)
        assert b["choices"][0]["text"] == a["choices"][0]["text"] and b["usage"] == a["usage"]
    stats = spec.speculative_stats()
    mine = stats["drafters"]["dflash"]
    assert set(stats["drafters"]) == {"dflash"} and mine["rounds"] == stats["rounds"] > 0
    # every proposal: its catch-up injections (n_ubatch rows each) and ONE block decode
    assert counter.proposals and all(calls == injections + 1 for calls, injections, _ in counter.proposals)
    assert dflash.n_blocks == len(counter.proposals)
    if drafter == "oracle":
        assert 0 < stats["accepted"] < stats["drafted"] and stats["accepted_at"][3] > 0
    else:  # p_min 0, adaptive off: every round drafts a full block of 4
        assert all(n == 4 for *_, n in counter.proposals)
        assert stats["head_decodes"] == stats["proposals"] == dflash.n_blocks


def test_sampling_seed_for_seed_and_adaptive(targets, dflash_heads):
    target, head = targets["llama"], dflash_heads["llama"][1]
    spec = spec_llm(target, head, eagle3_adaptive=True, eagle3_p_min=0.5, eagle3_ngram=True)
    assert spec._policy.costs.per_proposal
    assert spec.speculative_stats()["policy"]["draft_priced_per"] == "proposal"
    fixed = spec_llm(target, head)
    for seed in (1, 2, 3):
        plain = plain_llm(target, seed=seed)
        want = plain("the cat", max_tokens=30, temperature=0.8, seed=seed)["choices"][0]["text"]
        for llm in (spec, fixed):
            assert llm("the cat", max_tokens=30, temperature=0.8, seed=seed)["choices"][0]["text"] == want
    assert fixed.speculative_stats()["drafters"]["dflash"]["rounds"] > 0


def test_rollback_and_state_changes(targets, dflash_heads):
    """truncate / reset / load_state / prefix reuse keep the head in step: output stays plain's."""
    target, head = targets["qwen2"], dflash_heads["qwen2"][1]
    plain = plain_llm(target)
    spec = spec_llm(target, head, eagle3_draft_max=BLOCK - 1)
    d = spec._engine.drafter
    long = "it is what it is, or " * 4
    a = plain(long, max_tokens=40, temperature=0.0)["choices"][0]["text"]
    assert spec(long, max_tokens=40, temperature=0.0)["choices"][0]["text"] == a
    state = spec.save_state()
    assert spec(long + "x", max_tokens=20, temperature=0.0)["choices"][0]["text"] == \
        plain(long + "x", max_tokens=20, temperature=0.0)["choices"][0]["text"]  # prefix reuse: truncate
    spec.load_state(state)
    assert d.feature_end == spec.n_tokens
    spec.reset()
    assert (d.head_start, d.head_n, d.n_pending) == (0, 0, 0)
    assert spec(long, max_tokens=40, temperature=0.0)["choices"][0]["text"] == a
    # a rollback into the head's KV drops cells; positions before head_start restart it
    n = d.feature_end
    d._inject_pending()
    assert d.truncate(n - 3) == n - 3 and d.head_n == n - 3
    assert llama_cpp.llama_memory_seq_pos_max(d._mem, 0) == n - 4
    assert d.truncate(n + 10) == n - 3  # never past its features


def test_hf_directory_goes_through_the_conversion_cache(targets, dflash_heads, tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_EAGLE3_CACHE", str(tmp_path / "cache"))
    hf, _ = dflash_heads["llama"]
    spec = spec_llm(targets["llama"], hf)
    assert isinstance(spec._engine.drafter, DFlashDrafter)
    assert list((tmp_path / "cache" / "heads").rglob("*.gguf"))


def _variant(tmp_path: Path, hf: Path, target: Path, name: str, **config) -> Path:
    head = load_dflash_head(hf, load_target(str(target)))
    head.config = dataclasses.replace(head.config, **config)
    head.validate = lambda: None  # type: ignore[method-assign]  # a deliberately inconsistent file
    write_dflash_gguf(head, load_target(str(target)), tmp_path / f"{name}.gguf", "f32")
    return tmp_path / f"{name}.gguf"


def test_refusals(targets, dflash_heads, tmp_path):
    target = targets["llama"]
    hf, good = dflash_heads["llama"]
    with pytest.raises(ValueError, match="eagle3_tree_width=1"):
        spec_llm(target, good, eagle3_tree_width=2)
    with pytest.raises(ValueError, match="block_size - 1 = 7"):
        spec_llm(target, good, eagle3_draft_max=BLOCK)
    cases = {"taps": (dict(target_layers=(2, 3, 5, 8)), r"outside 1\.\.7"),
             "mask": (dict(mask_token_id=10**6), "mask_token_id"),
             "fc": (dict(target_layers=(2, 3, 5)), "fc.weight has shape")}
    for name, (config, message) in cases.items():
        with pytest.raises(ValueError, match=message) as e:
            spec_llm(target, _variant(tmp_path, hf, target, name, **config))
        assert "DFlash head" in str(e.value)


@pytest.mark.parametrize("meta, tensor, message", [
    ({"dflash.attention.causal": True}, None, "block-causal"),
    ({}, "selector_hidden.weight", "DFlash2"),
    ({}, "markov_w1.weight", "DSpark"),
])
def test_other_dflash_variants_refused(targets, dflash_heads, monkeypatch, meta, tensor, message):
    """Files llama.cpp's own converter writes for DFlash2 / DSpark / block-causal heads draft otherwise."""
    import llama_eagle3.dflash as dflash_module

    real = dflash_module.read_gguf_header

    def patched(path):
        h = real(path)
        extra = {} if tensor is None else {tensor: h.tensors["fc.weight"]}
        return dataclasses.replace(h, meta={**h.meta, **meta}, tensors={**h.tensors, **extra})

    monkeypatch.setattr(dflash_module, "read_gguf_header", patched)
    with pytest.raises(ValueError, match=message):
        spec_llm(targets["llama"], dflash_heads["llama"][1])


def test_policy_prices_a_proposal_once():
    eagle, dflash = DraftPolicy(8), DraftPolicy(8, costs=CostTable(per_proposal=True))
    for p in (eagle, dflash):
        for rows in range(1, 10):
            p.costs.add(rows, 0.010 + 0.002 * rows)
        p.observe_draft(4, 0.004)
        p.observe_overhead(5, 0.001)
    assert eagle.costs.step == pytest.approx(0.001) and dflash.costs.step == pytest.approx(0.004)
    assert eagle.costs.round_cost(4) == pytest.approx(0.020 + 4 * 0.001 + 0.001)
    assert dflash.costs.round_cost(4) == pytest.approx(0.020 + 0.004 + 0.001)
    assert dflash.costs.round_cost(8) == pytest.approx(0.028 + 0.004 + 0.001)
    assert dflash.costs.round_cost(0) == eagle.costs.round_cost(0) == pytest.approx(0.012 + 0.001)
    dflash.observe_draft(0, 0.006)  # a block cut to no drafts still cost its decode
    assert dflash.costs.step == pytest.approx(0.005)  # the median of its samples (costs.RecentMedian)
    assert "draft_priced_per" not in eagle.snapshot() and dflash.snapshot()["draft_priced_per"] == "proposal"


@pytest.mark.slow
def test_smollm2_random_dflash_head(tmp_path, smollm2, monkeypatch):
    """A random DFlash head at SmolLM2-135M's shape (4 taps, block 16) against the real GGUF."""
    hf = write_random_dflash_head(tmp_path / "hf", SMOLLM2_135M_DFLASH)
    head = tmp_path / "smol-dflash.gguf"
    convert(hf, str(smollm2), head, "f16", log=quiet)
    plain = plain_llm(smollm2)
    prompt = "The capital of France is"
    ref = greedy_tokens(plain, prompt, 24)
    spec = spec_llm(smollm2, head, eagle3_draft_max=8)
    counter = HeadCalls(monkeypatch, spec._engine.drafter)
    assert greedy_tokens(spec, prompt, 24) == ref
    head = spec.speculative_stats()
    assert head["head_decodes"] == head["proposals"] == len(counter.proposals) > 0  # one block decode each
    oracle.install(spec, [ref], error_rate=0.2)
    assert greedy_tokens(spec, prompt, 24) == ref
    stats = spec.speculative_stats()
    assert stats["drafters"]["dflash"]["rounds"] > 0 and stats["accepted"] > 0
    assert all(calls == injections + 1 for calls, injections, _ in counter.proposals)
    seed = 7
    want = plain(prompt, max_tokens=16, temperature=0.8, seed=seed)["choices"][0]["text"]
    assert spec(prompt, max_tokens=16, temperature=0.8, seed=seed)["choices"][0]["text"] == want


def test_a_proposal_is_priced_by_the_drafts_it_asked_for():
    """On a CPU one block decode grows with its rows (measured at SmolLM2's shape: 2.5 ms for 4
    drafts, 4.9 for 8, 9.0 for 16): each length's proposals are priced apart, interpolated between."""
    p = DraftPolicy(16, costs=CostTable(per_proposal=True))
    for k, ms in ((4, 2.5), (8, 4.9), (16, 9.0)):
        for _ in range(3):
            p.observe_draft(k, ms * 1e-3, asked=k)
    assert p.costs.draft_cost(4) == pytest.approx(2.5e-3) and p.costs.draft_cost(16) == pytest.approx(9.0e-3)
    assert p.costs.draft_cost(12) == pytest.approx(6.95e-3) and p.costs.draft_cost(0) == 0.0
    assert p.costs.draft_cost(2) == pytest.approx(1.3e-3)  # extrapolated from the two shortest
    only_step = CostTable(per_proposal=True)
    only_step.add_step(3e-3)
    assert only_step.draft_cost(6) == 3e-3                  # no length measured yet: any proposal's median


def test_bench_runs_dflash_next_to_eagle3(targets, heads, dflash_heads, tmp_path):
    """`llama-eagle3 bench --dflash-head`: a fixed block of --draft-max drafts (dflash) and the
    adaptive policy (dflash-auto) next to EAGLE-3's chain, all reproducing plain greedy text, the
    DFlash methods' stats under the dflash drafter."""
    from llama_eagle3 import bench

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["the cat sat on", "hello"]))
    s = bench.bench(str(targets["llama"]), str(heads["llama"]), prompts, max_tokens=16, threads=1,
                    methods=("plain", "eagle3", "dflash", "dflash-auto"), dflash_head=str(dflash_heads["llama"][1]),
                    log=quiet)
    assert list(s["methods"]) == ["plain", "eagle3", "dflash", "dflash-auto"]
    for name in ("eagle3", "dflash", "dflash-auto"):
        assert s["methods"][name]["identical"] == 2, name
    assert s["speculative"]["dflash"]["drafters"]["dflash"]["rounds"] > 0
    assert "eagle3" in s["speculative"]["eagle3"]["drafters"]
    with pytest.raises(ValueError, match="--dflash-head"):
        bench.bench(str(targets["llama"]), str(heads["llama"]), prompts, methods=("plain", "dflash"), log=quiet)


def test_hub_id_logprobs_and_server_settings(targets, dflash_heads, tmp_path, monkeypatch):
    """A DFlash head by hub id (offline, from a hub cache laid out as huggingface_hub writes it),
    converted once into the heads cache; completions' logprobs are the target's own; the server's
    model settings load it like an EAGLE-3 head."""
    from test_hub import lay_out_repo

    hf, _ = dflash_heads["llama"]
    lay_out_repo(tmp_path / "hub", "tiny-org/tiny-dflash", {f: hf / f for f in ("config.json", "model.safetensors")},
                 "c" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("LLAMA_EAGLE3_CACHE", str(tmp_path / "heads"))
    spec = spec_llm(targets["llama"], "tiny-org/tiny-dflash", logits_all=True)
    assert isinstance(spec._engine.drafter, DFlashDrafter)
    plain = plain_llm(targets["llama"], logits_all=True)
    want = plain.create_completion("the cat sat", max_tokens=16, temperature=0.0, logprobs=3)["choices"][0]
    got = spec.create_completion("the cat sat", max_tokens=16, temperature=0.0, logprobs=3)["choices"][0]
    assert got["text"] == want["text"] and spec.speculative_stats()["drafters"]["dflash"]["rounds"] > 0
    np.testing.assert_allclose(got["logprobs"]["token_logprobs"], want["logprobs"]["token_logprobs"], atol=1e-4)
    for a, b in zip(got["logprobs"]["top_logprobs"], want["logprobs"]["top_logprobs"]):
        assert a.keys() == b.keys()
    pytest.importorskip("llama_cpp.server")
    from llama_eagle3.server import Eagle3LlamaProxy, Eagle3ModelSettings

    settings = Eagle3ModelSettings(model=str(targets["llama"]), eagle3_head="tiny-org/tiny-dflash", n_ctx=256,
                                   n_threads=1, n_threads_batch=1, verbose=False, eagle3_adaptive=False)
    served = Eagle3LlamaProxy.load_llama_from_model_settings(settings)
    assert isinstance(served._engine.drafter, DFlashDrafter)
