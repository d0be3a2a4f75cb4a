"""convert-eagle3-gguf: every HF layout, both layer-id conventions, every outtype, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tiny_models as tm
from eagle3_convert.cli import convert, main
from eagle3_convert.errors import ConversionError
from eagle3_convert.gguf_io import read_head_gguf
from eagle3_convert.layouts import load_hf_head
from eagle3_convert.target import target_from_gguf

LAYOUTS = [
    tm.HeadSpec("specforge"),
    tm.HeadSpec("angelslim"),
    tm.HeadSpec("speculators", norm_before_residual=True, norm_before_fc=True),
    tm.HeadSpec("eagle", fmt="bin"),
    tm.HeadSpec("specforge", own_embeddings=True, full_vocab=True),
]


@pytest.mark.parametrize("spec", LAYOUTS, ids=lambda s: f"{s.layout}-{s.fmt}")
def test_layouts_convert_and_round_trip(spec, tmp_path, targets, n_vocab):
    hf = tm.build_hf_head(tmp_path / "hf", spec, n_vocab)
    out = tmp_path / "head.gguf"
    head = convert(hf, str(targets["llama"]), out, "f32", log=lambda *a: None)
    assert head.extra["layout"] == spec.layout
    # every layout's stored ids name the same states: input of layers 2, 4, 5
    assert head.config.target_layers == tm.CAPTURE_IDS
    back = read_head_gguf(out)
    raw = tm.random_head_tensors(spec, n_vocab)
    np.testing.assert_array_equal(back.fc, raw["fc.weight"])
    np.testing.assert_array_equal(back.q_proj, raw["L.self_attn.q_proj.weight"])  # permutation undone exactly
    np.testing.assert_array_equal(back.k_proj, raw["L.self_attn.k_proj.weight"])
    if spec.full_vocab:
        assert back.d2t is None
    else:
        assert back.d2t.dtype == np.int64
        np.testing.assert_array_equal(back.d2t, raw["d2t"] + np.arange(tm.DRAFT_VOCAB))  # offsets -> absolute
    assert back.config.norm_before_fc == spec.norm_before_fc
    assert back.config.norm_before_residual == spec.norm_before_residual
    assert (back.embed_tokens is not None) == spec.own_embeddings


def test_conventions_and_overrides(tmp_path, targets, n_vocab):
    target = target_from_gguf(targets["llama"])
    hf = tm.build_hf_head(tmp_path / "hf", tm.HeadSpec("specforge"), n_vocab)  # stores output-of ids 1, 3, 4
    assert load_hf_head(hf, target).config.target_layers == (2, 4, 5)
    assert load_hf_head(hf, target, convention="input").config.target_layers == (1, 3, 4)
    assert load_hf_head(hf, target, explicit_layers=[3, 4, 6]).config.target_layers == (3, 4, 6)
    assert load_hf_head(hf, target, "output", [2, 3, 4]).config.target_layers == (3, 4, 5)


@pytest.mark.parametrize("outtype,limit", [("f16", 1e-2), ("bf16", 5e-2), ("q8_0", 5e-2)])
def test_outtypes(outtype, limit, tmp_path, targets, n_vocab):
    import gguf

    hf = tm.build_hf_head(tmp_path / "hf", tm.HeadSpec("specforge"), n_vocab)
    out = tmp_path / "head.gguf"
    convert(hf, str(targets["llama"]), out, outtype, log=lambda *a: None)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.attn_q.weight"] == outtype.upper()
    assert types["blk.0.attn_norm.weight"] == "F32" and types["d2t"] == "I64"


def test_cli_entry_point(tmp_path, targets, n_vocab):
    hf = tm.build_hf_head(tmp_path / "hf", tm.HeadSpec("angelslim"), n_vocab)
    out = tmp_path / "head.gguf"
    r = subprocess.run([sys.executable, "-m", "eagle3_convert", str(hf), "--target", str(targets["gemma3"]),
                        "--outfile", str(out), "--outtype", "f32"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "output of layer i" in r.stdout and out.exists()


def _mutate(tmp_path, n_vocab, edit_config=None, edit_tensors=None) -> Path:
    spec = tm.HeadSpec("specforge")
    d = tmp_path / "bad"
    d.mkdir()
    cfg = tm.head_config(spec, n_vocab)
    tensors = {("midlayer." + k[2:] if k.startswith("L.") else k): v for k, v in tm.random_head_tensors(spec, n_vocab).items()}
    if edit_config:
        edit_config(cfg)
    if edit_tensors:
        edit_tensors(tensors)
    (d / "config.json").write_text(json.dumps(cfg))
    tm.write_safetensors(d / "model.safetensors", tensors)
    return d


def _d2t_dup(t):
    t["d2t"] = np.zeros_like(t["d2t"]) - np.arange(len(t["d2t"]))  # every draft id -> target id 0


def _d2t_range(t):
    t["d2t"][-1] = 10_000


BAD = {
    "missing tensor": (None, lambda t: t.pop("midlayer.self_attn.q_proj.weight"), "q_proj"),
    "wrong shape": (None, lambda t: t.__setitem__("fc.weight", np.zeros((64, 100), np.float32)), "fc"),
    "unknown tensor": (None, lambda t: t.__setitem__("midlayer.extra.weight", np.zeros(3, np.float32)), "midlayer.extra"),
    "d2t duplicates": (None, _d2t_dup, "same target id"),
    "d2t out of range": (None, _d2t_range, "outside"),
    "NaN weights": (None, lambda t: t["norm.weight"].__setitem__(0, np.nan), "NaN"),
    "heads do not divide q_proj": (lambda c: c.__setitem__("num_attention_heads", 5), None, "num_attention_heads 5"),
    "wrong-typed key": (lambda c: c.__setitem__("intermediate_size", "big"), None, "intermediate_size"),
    "two layers": (None, lambda t: t.__setitem__("layers.1.mlp.up_proj.weight", t["midlayer.mlp.up_proj.weight"]),
                   "2 decoder layers"),
    "bad layer ids": (lambda c: c["eagle_config"].__setitem__("eagle_aux_hidden_state_layer_ids", [1, 2]), None,
                      "eagle_aux_hidden_state_layer_ids"),
    "layer beyond target": (lambda c: c["eagle_config"].__setitem__("eagle_aux_hidden_state_layer_ids", [1, 3, 9]), None,
                            "outside 1..7"),
    "vocab mismatch": (lambda c: c.__setitem__("vocab_size", 999), None, "vocab"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_heads_raise_named_errors(case, tmp_path, targets, n_vocab):
    edit_config, edit_tensors, needle = BAD[case]
    d = _mutate(tmp_path, n_vocab, edit_config, edit_tensors)
    with pytest.raises(ConversionError, match=needle):
        convert(d, str(targets["llama"]), tmp_path / "out.gguf", "f32", log=lambda *a: None)


def test_hidden_size_mismatch_with_target(tmp_path, targets, n_vocab):
    d = _mutate(tmp_path, n_vocab, lambda c: c.__setitem__("target_hidden_size", 32),
                lambda t: t.__setitem__("fc.weight", np.zeros((64, 96), np.float32)))
    with pytest.raises(ConversionError, match="target hidden size 32"):
        convert(d, str(targets["llama"]), tmp_path / "out.gguf", "f32", log=lambda *a: None)


def test_corrupt_files(tmp_path, targets, n_vocab):
    hf = tm.build_hf_head(tmp_path / "hf", tm.HeadSpec("specforge"), n_vocab)
    st = hf / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(ConversionError, match="truncated"):
        convert(hf, str(targets["llama"]), tmp_path / "o.gguf", log=lambda *a: None)
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(ConversionError, match="corrupt safetensors header"):
        convert(hf, str(targets["llama"]), tmp_path / "o.gguf", log=lambda *a: None)
    (hf / "config.json").write_text("{")
    with pytest.raises(ConversionError, match="malformed JSON"):
        convert(hf, str(targets["llama"]), tmp_path / "o.gguf", log=lambda *a: None)
    good = tm.build_hf_head(tmp_path / "hf2", tm.HeadSpec("specforge"), n_vocab)
    bad_target = tmp_path / "t.gguf"
    bad_target.write_bytes(targets["llama"].read_bytes()[:5000])
    with pytest.raises(ConversionError, match="not a readable GGUF"):
        convert(good, str(bad_target), tmp_path / "o.gguf", log=lambda *a: None)
    assert main([str(good), "--target", str(bad_target), "--outfile", str(tmp_path / "o.gguf")]) == 1


def test_bin_reader_refuses_code(tmp_path):
    import pickle
    import zipfile

    from eagle3_convert.checkpoint import read_torch_bin

    p = tmp_path / "evil.bin"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": print}))
    with pytest.raises(ConversionError, match="refusing to load builtins.print"):
        read_torch_bin(p)


def test_lazy_matrices_read_like_arrays(tmp_path):
    """Safetensors matrices stay on disk (LazyTensor); whole, row-range and picked-row reads agree."""
    from eagle3_convert.checkpoint import LazyTensor, read_safetensors, write_safetensors

    a = np.random.default_rng(0).standard_normal((9000, 8)).astype(np.float32)
    write_safetensors(tmp_path / "m.safetensors", {"m": a, "v": a[0]})
    t = read_safetensors(tmp_path / "m.safetensors")
    assert isinstance(t["m"], LazyTensor) and isinstance(t["v"], np.ndarray)
    np.testing.assert_array_equal(np.asarray(t["m"]), a)
    np.testing.assert_array_equal(t["m"][4090:4100], a[4090:4100])
    rows = np.array([8999, 0, 4096, 4095, 17])
    np.testing.assert_array_equal(t["m"][rows], a[rows])


@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
def test_chunked_writing_writes_the_same_file(outtype, tmp_path, targets, n_vocab, monkeypatch):
    """Matrices are read and written a few rows at a time (real heads: 4096); the file is the same."""
    from eagle3_convert.checkpoint import LazyTensor
    from eagle3_convert.gguf_io import _RowChunks

    hf = tm.build_hf_head(tmp_path / "hf", tm.HeadSpec("specforge", own_embeddings=True), n_vocab)
    convert(hf, str(targets["llama"]), tmp_path / "whole.gguf", outtype, log=lambda *a: None)
    monkeypatch.setattr(_RowChunks, "CHUNK_ROWS", 7)
    monkeypatch.setattr(LazyTensor, "CHUNK_ROWS", 5)
    convert(hf, str(targets["llama"]), tmp_path / "chunked.gguf", outtype, log=lambda *a: None)
    assert (tmp_path / "chunked.gguf").read_bytes() == (tmp_path / "whole.gguf").read_bytes()
