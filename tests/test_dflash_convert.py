"""DFlash heads: conversion of both checkpoint layouts to llama.cpp's `dflash` GGUF, the refusals,
the random-head CLI, and the NumPy reference against llama.cpp's own dflash graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tiny_models as tm
from dflash_llama_cpp import DFlashGraph
from eagle3_convert.checkpoint import read_weights, write_safetensors
from eagle3_convert.cli import convert, main
from eagle3_convert.dflash_gguf import DFlashGgufWeights
from eagle3_convert.errors import ConversionError
from eagle3_convert.gguf_header import read_gguf_header
from eagle3_convert.random_dflash import (QWEN3_8B_DFLASH, DFlashShape, _config, _tensor_shapes,
                                          write_random_dflash_head)
from eagle3_convert.random_head import main as random_head_main
from eagle3_convert.reference_dflash import block_states, draft_block
from eagle3_convert.target import gguf_tensor, open_gguf

ZLAB_IDS = (1, 3, 5)        # z-lab ids: OUTPUT of target layer i ...
LLAMA_IDS = [2, 4, 6]       # ... = llama.cpp's INPUT of layer i + 1
BLOCK, DRAFT_VOCAB = 8, 128


def quiet(*_: object) -> None:
    pass


def tiny_shape(n_vocab: int, **kw) -> DFlashShape:
    base = dict(hidden=tm.H, n_layers=2, n_head=tm.N_HEAD, n_kv_head=tm.N_KV, head_dim=tm.HEAD_DIM, intermediate=96,
                vocab=n_vocab, target_layer_ids=ZLAB_IDS, num_target_layers=tm.N_LAYER, block_size=BLOCK,
                mask_token_id=n_vocab - 1, rope_theta=10000.0, max_position_embeddings=tm.CTX)
    return DFlashShape(**{**base, **kw})


def zlab_head(directory: Path, n_vocab: int, config_update: dict = (), extra: dict = (), **kw) -> Path:
    """A random z-lab checkpoint; config_update / extra: keys merged into config.json / tensors added."""
    write_random_dflash_head(directory, tiny_shape(n_vocab, **kw))
    if config_update or extra:
        cfg = json.loads((directory / "config.json").read_text())
        cfg.update(dict(config_update))
        (directory / "config.json").write_text(json.dumps(cfg))
        tensors = {k: np.asarray(v) for k, v in read_weights(directory).items()}
        write_safetensors(directory / "model.safetensors", {**tensors, **dict(extra)})
    return directory


def speculators_head(directory: Path, n_vocab: int, with_lm_head: bool = True) -> Path:
    """The same tensors in the speculators layout: nested config, input-of-layer ids, d2t (+ lm_head)."""
    zlab_head(directory, n_vocab)
    flat = json.loads((directory / "config.json").read_text())
    inner = {k: v for k, v in flat.items() if k not in ("architectures", "dflash_config", "block_size")}
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["DFlashSpeculator"], "speculators_model_type": "dflash", "transformer_layer_config": inner,
        "draft_vocab_size": DRAFT_VOCAB, "block_size": BLOCK, "mask_token_id": n_vocab - 1,
        "aux_hidden_state_layer_ids": LLAMA_IDS}))
    rng = np.random.default_rng(5)
    ids = np.sort(rng.choice(n_vocab, DRAFT_VOCAB, replace=False)).astype(np.int64)
    tensors = {k: np.asarray(v) for k, v in read_weights(directory).items()}
    tensors["d2t"] = ids - np.arange(DRAFT_VOCAB)  # HF offsets
    mask = np.zeros(n_vocab, dtype=bool)
    mask[ids] = True
    tensors["t2d"] = mask
    if with_lm_head:
        tensors["lm_head.weight"] = (4 * rng.standard_normal((DRAFT_VOCAB, tm.H)) / np.sqrt(tm.H)).astype(np.float32)
    write_safetensors(directory / "model.safetensors", tensors)
    return directory


@pytest.fixture(scope="module")
def zlab_gguf(tmp_path_factory, targets, n_vocab) -> Path:
    d = tmp_path_factory.mktemp("dflash")
    out = d / "zlab.gguf"
    convert(zlab_head(d / "hf", n_vocab), str(targets["llama"]), out, "f32", log=quiet)
    return out


# ---- conversion -----------------------------------------------------------------------------

def test_zlab_layout_writes_llama_cpp_dflash_schema(zlab_gguf, targets, n_vocab):
    h = read_gguf_header(zlab_gguf)
    m = h.meta
    assert m["general.architecture"] == "dflash"
    assert m["dflash.target_layers"] == LLAMA_IDS  # z-lab ids + 1
    assert (m["dflash.block_size"], m["tokenizer.ggml.mask_token_id"]) == (BLOCK, n_vocab - 1)
    assert m["dflash.attention.causal"] is False and m["dflash.block_count"] == 2
    assert m["tokenizer.ggml.tokens"] == tm.tokenizer_keys()["tokenizer.ggml.tokens"]
    layer = {f"blk.{i}.{n}.weight" for i in range(2) for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                               "attn_q_norm", "attn_k_norm", "ffn_norm", "ffn_gate",
                                                               "ffn_up", "ffn_down")}
    assert set(h.tensors) == layer | {"fc.weight", "enc.output_norm.weight", "output_norm.weight"}
    assert h.tensors["fc.weight"].ne == (3 * tm.H, tm.H)  # ggml order: {in, out}


def test_written_tensors_are_the_checkpoint(zlab_gguf, tmp_path, targets, n_vocab):
    """q/k are stored as in HF (no permutation: llama.cpp's dflash RoPE is NeoX = rotate-half)."""
    hf = read_weights(zlab_head(tmp_path / "hf", n_vocab))
    w = DFlashGgufWeights(zlab_gguf)
    np.testing.assert_array_equal(w.layers[1].q_proj, np.asarray(hf["layers.1.self_attn.q_proj.weight"]))
    np.testing.assert_array_equal(w.layers[0].k_norm, hf["layers.0.self_attn.k_norm.weight"])
    np.testing.assert_array_equal(w.hidden_norm, hf["hidden_norm.weight"])


@pytest.mark.parametrize("with_lm_head", [True, False], ids=["own-lm-head", "lm-head-from-target"])
def test_speculators_layout(tmp_path, targets, n_vocab, with_lm_head):
    out = tmp_path / "spec.gguf"
    head = convert(speculators_head(tmp_path / "hf", n_vocab, with_lm_head), str(targets["llama"]), out, "f16",
                   log=quiet)
    w = DFlashGgufWeights(out)
    assert read_gguf_header(out).meta["dflash.target_layers"] == LLAMA_IDS  # speculators ids as they are
    assert w.config.draft_vocab_size == DRAFT_VOCAB and w.lm_head.shape == (DRAFT_VOCAB, tm.H)
    np.testing.assert_array_equal(w.d2t, head.d2t)  # absolute ids
    if not with_lm_head:
        target_rows = gguf_tensor(open_gguf(targets["llama"]), "output.weight")[head.d2t]
        np.testing.assert_allclose(w.lm_head, target_rows, rtol=1e-3, atol=1e-3)


REFUSALS = [
    ({"architectures": ["DFlash2DraftModel"]}, {}, "DFlash2"),
    ({"dflash_config": {"mask_token_id": 5, "target_layer_ids": [1, 3, 5], "selector_rank": 8}}, {}, "DFlash2"),
    ({}, {"layers.0.attention_conv.base_kernel": np.zeros((2, 2, tm.H), np.float32)}, "DFlash2"),
    ({"architectures": ["DSparkDraftModel"]}, {}, "DSpark"),
    ({}, {"markov_head.w1.weight": np.zeros((4, 8), np.float32)}, "DSpark"),
    ({"layer_types": ["sliding_attention"] * 2, "sliding_window": 64}, {}, "sliding-window"),
    ({"dflash_config": {"mask_token_id": 5, "target_layer_ids": [1, 3, 5], "projector_type": "domino"}}, {},
     "projector_type"),
    ({"is_causal": True}, {}, "block-causal"),
    ({"hidden_act": "gelu"}, {}, "hidden_act"),
    ({"dflash_config": {"mask_token_id": 5, "target_layer_ids": [1, 3, 5], "output_multiplier": 0.5}}, {},
     "output_multiplier"),
    ({"dflash_config": {"target_layer_ids": [1, 3, 5]}}, {}, "mask_token_id is missing"),
    ({"dflash_config": {"mask_token_id": 5, "target_layer_ids": [1, 3, 7]}}, {}, "outside 1..7"),
    ({"dflash_config": {"mask_token_id": 5, "target_layer_ids": [1, 3]}}, {}, "tensor fc reads 192 values"),
    ({}, {"layers.0.self_attn.q_proj.bias": np.ones(tm.N_HEAD * tm.HEAD_DIM, np.float32)}, "biases"),
]


@pytest.mark.parametrize("config_update,extra,message", REFUSALS, ids=[r[2] for r in REFUSALS])
def test_refusals_are_one_line_and_name_the_feature(tmp_path, targets, n_vocab, config_update, extra, message):
    hf = zlab_head(tmp_path / "hf", n_vocab, config_update, extra)
    with pytest.raises(ConversionError, match=message) as e:
        convert(hf, str(targets["llama"]), tmp_path / "out.gguf", "f32", log=quiet)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out.gguf").exists()


def test_head_must_have_the_targets_width(tmp_path, targets, n_vocab):
    hf = zlab_head(tmp_path / "hf", n_vocab, hidden=32, n_head=2, n_kv_head=1)
    with pytest.raises(ConversionError, match="head hidden size 32 differs from the hidden size 64"):
        convert(hf, str(targets["llama"]), tmp_path / "out.gguf", "f32", log=quiet)


def test_cli_refuses_eagle3_only_options_for_dflash(tmp_path, targets, n_vocab, capsys):
    hf = zlab_head(tmp_path / "hf", n_vocab)
    rc = main([str(hf), "--target", str(targets["llama"]), "--outfile", str(tmp_path / "o.gguf"),
               "--target-layers", "2,4,6"])
    assert rc == 1 and "apply to EAGLE-3 heads only" in capsys.readouterr().err


# ---- random heads -----------------------------------------------------------------------------

def test_random_head_cli_writes_both_kinds(tmp_path, smollm2):
    assert random_head_main(["--kind", "dflash", "--like", "smollm2-135m", "--dtype", "bf16",
                             "--out", str(tmp_path / "dflash")]) == 0
    assert random_head_main(["--kind", "eagle3", "--out", str(tmp_path / "eagle3")]) == 0
    assert (tmp_path / "eagle3" / "model.safetensors").exists()
    out = tmp_path / "dflash.gguf"
    head = convert(tmp_path / "dflash", str(smollm2), out, "bf16", log=quiet)
    assert head.config.target_layers == (2, 11, 20, 28) and head.config.n_taps == 4
    assert read_gguf_header(out).meta["dflash.embedding_length"] == 576


def test_qwen3_8b_shape_matches_the_published_head():
    """z-lab/Qwen3-8B-DFlash-b16: fc 4096 x 5*4096, 5 layers of 32/8 heads of 128, FFN 12288 (not written:
    about 1e9 parameters)."""
    shapes, cfg = _tensor_shapes(QWEN3_8B_DFLASH), _config(QWEN3_8B_DFLASH, "bf16")
    assert shapes["fc.weight"] == (4096, 5 * 4096) and shapes["layers.4.mlp.gate_proj.weight"] == (12288, 4096)
    assert shapes["layers.0.self_attn.k_proj.weight"] == (8 * 128, 4096)
    assert sum(int(np.prod(s)) for s in shapes.values()) == pytest.approx(1.05e9, rel=0.01)
    assert cfg["dflash_config"]["target_layer_ids"] == [1, 9, 17, 25, 33] and cfg["num_target_layers"] == 36


def test_bf16_random_head_reads_back_close_to_f32(tmp_path, n_vocab):
    a = read_weights(write_random_dflash_head(tmp_path / "f32", tiny_shape(n_vocab), "f32", seed=3))
    b = read_weights(write_random_dflash_head(tmp_path / "bf16", tiny_shape(n_vocab), "bf16", seed=3))
    for name in a:
        np.testing.assert_allclose(np.asarray(b[name]), np.asarray(a[name]), rtol=1 / 128, atol=1e-6)


# ---- the reference against llama.cpp's dflash graph --------------------------------------------

POSITIONS = (5, 100, 300)  # p0: the block's first position; the context holds positions 0..p0-1


def _compare(graph: DFlashGraph, path: Path, target: Path, rng: np.random.Generator, p0: int):
    """(llama.cpp logits, reference logits, llama.cpp states, reference states) of one block after
    p0 context rows; the reference gets the target's embedding and output matrix as llama.cpp does."""
    w = DFlashGgufWeights(path)
    c = w.config
    reader = open_gguf(target)
    emb = gguf_tensor(reader, "token_embd.weight")
    lm = w.lm_head if w.lm_head is not None else gguf_tensor(reader, "output.weight")
    graph.clear()
    features = rng.standard_normal((p0, c.n_taps * c.hidden_size)).astype(np.float32)
    graph.inject(features, np.arange(p0))
    tokens = np.array([int(rng.integers(0, c.vocab_size))] + [c.mask_token_id] * (c.block_size - 1))
    logits, states = graph.block(tokens, p0)
    ref_states = block_states(w, c, features, np.arange(p0), emb[tokens], p0)
    return logits, draft_block(w, c, features, np.arange(p0), emb[tokens], p0, lm), states, ref_states


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("precise", [True, False], ids=["f32-kv-no-flash-attn", "llama.cpp-defaults"])
def test_llama_cpp_dflash_graph_matches_reference(zlab_gguf, targets, precise):
    """f32 KV cache without flash attention: the states agree to float32 rounding; llama.cpp's
    defaults (f16 K/V, CPU flash attention in f16) to about 1e-3. The logits go through the
    target's Q8_0 output matrix, whose matmul quantizes the activations to 8 bits: 1e-2."""
    graph = DFlashGraph(zlab_gguf, targets["llama"], precise=precise)
    try:
        rng = np.random.default_rng(0)
        for p0 in POSITIONS:
            logits, ref_logits, states, ref_states = _compare(graph, zlab_gguf, targets["llama"], rng, p0)
            assert rel(states, ref_states) <= (1e-5 if precise else 3e-3), p0
            assert rel(logits, ref_logits) <= 1e-2, p0
            assert (logits.argmax(1) == ref_logits.argmax(1)).mean() >= 0.75, p0
    finally:
        graph.close()


def test_llama_cpp_scatters_d2t_logits(tmp_path, targets, n_vocab):
    """A reduced-vocabulary head: llama.cpp's logits are the draft logits at the d2t ids, -inf elsewhere."""
    out = tmp_path / "spec.gguf"
    head = convert(speculators_head(tmp_path / "hf", n_vocab), str(targets["llama"]), out, "f32", log=quiet)
    graph = DFlashGraph(out, targets["llama"])
    try:
        logits, ref_logits, states, ref_states = _compare(graph, out, targets["llama"], np.random.default_rng(1), 100)
    finally:
        graph.close()
    assert rel(states, ref_states) <= 1e-5 and rel(logits[:, head.d2t], ref_logits) <= 1e-5
    others = np.setdiff1d(np.arange(n_vocab), head.d2t)
    assert np.isneginf(logits[:, others]).all()


def test_drafting_continues_after_the_block_is_dropped(zlab_gguf, targets):
    """What a runtime does between drafts: the block's rows stay in the draft cache (positions
    p0..p0+n-1), so it drops them, injects the accepted tokens' feature rows at p0.. and drafts the
    next block; the result is the same as injecting the whole context at once."""
    graph = DFlashGraph(zlab_gguf, targets["llama"])
    try:
        c = DFlashGgufWeights(zlab_gguf).config
        rng = np.random.default_rng(2)
        features = rng.standard_normal((60, graph.row_width)).astype(np.float32)
        tokens = np.array([17] + [c.mask_token_id] * (c.block_size - 1))
        graph.clear()
        graph.inject(features[:50], np.arange(50))
        graph.block(tokens, 50)
        assert graph.pos_max() == 50 + c.block_size - 1
        graph.drop_from(50)
        graph.inject(features[50:55], np.arange(50, 55))  # five accepted tokens
        incremental, _ = graph.block(tokens, 55)
        graph.clear()
        graph.inject(features[:55], np.arange(55))
        at_once, _ = graph.block(tokens, 55)
    finally:
        graph.close()
    np.testing.assert_array_equal(incremental, at_once)
