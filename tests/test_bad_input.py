"""Bad heads raise a Python exception naming the problem; the interpreter survives.

Each case runs in a subprocess, so a llama.cpp abort would show up as a crash
instead of killing the test run."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eagle3_convert.gguf_io import read_head_gguf, write_head_gguf
from eagle3_convert.target import target_from_gguf


def run_case(target: Path, head: Path) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        from llama_eagle3 import Llama
        try:
            Llama({str(target)!r}, n_ctx=128, verbose=False, eagle3_head={str(head)!r})
        except Exception as e:
            print("RAISED", type(e).__name__, e)
        else:
            print("LOADED")
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def variant(tmp_path: Path, good: Path, target: Path, name: str, edit_config=None, edit_head=None,
            target_edit=None) -> Path:
    head = read_head_gguf(good)
    if edit_config:
        head.config = dataclasses.replace(head.config, **edit_config)
    if edit_head:
        edit_head(head)
    info = target_from_gguf(target)
    if target_edit:
        target_edit(info)
    out = tmp_path / f"{name}.gguf"
    head.validate = lambda: None  # write deliberately inconsistent files
    write_head_gguf(head, info, out, "f32")
    return out


def _drop_q(h):
    h.q_proj = None


def _fewer_tokens(t):
    t.tokenizer = {**t.tokenizer, "tokenizer.ggml.tokens": t.tokenizer["tokenizer.ggml.tokens"][:200],
                   "tokenizer.ggml.token_type": t.tokenizer["tokenizer.ggml.token_type"][:200]}


def test_bad_heads(tmp_path, targets, heads):
    target, good = targets["llama"], heads["llama"]
    assert "LOADED" in run_case(target, good).stdout  # the control case
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[:3000])
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    cases = {
        "hidden size": (variant(tmp_path, good, target, "hidden", edit_config={"target_hidden_size": 32},
                                edit_head=lambda h: setattr(h, "fc", h.fc[:, :96])), "target hidden size 32"),
        "vocab": (variant(tmp_path, good, target, "vocab", edit_config={"vocab_size": 200}), "vocab_size 200"),
        "layer ids": (variant(tmp_path, good, target, "layers", edit_config={"target_layers": (2, 4, 9)}),
                      "outside 1..7"),
        "missing tensor": (variant(tmp_path, good, target, "noq", edit_head=_drop_q), "blk.0.attn_q.weight"),
        "d2t range": (variant(tmp_path, good, target, "d2t", edit_head=lambda h: h.d2t.__setitem__(0, 99999)),
                      "d2t"),
        "not eagle": (target, "not 'eagle3'"),
        "truncated": (truncated, "not a readable GGUF"),
        "garbage": (garbage, "not a readable GGUF"),
        "missing file": (tmp_path / "nope.gguf", "does not exist"),
    }
    for name, (head, needle) in cases.items():
        r = run_case(target, head)
        assert r.returncode == 0, f"{name}: interpreter died ({r.returncode}): {r.stderr[-500:]}"
        assert "RAISED ValueError" in r.stdout and needle in r.stdout, f"{name}: {r.stdout} {r.stderr[-300:]}"


def test_bad_arguments(targets, heads):
    from llama_eagle3 import Llama

    for kw, needle in [({"eagle3_draft_max": -1}, "eagle3_draft_max"), ({"eagle3_p_min": 2.0}, "eagle3_p_min"),
                       ({"eagle3_capture": "magic"}, "eagle3_capture"), ({"eagle3_tree_width": 0}, "eagle3_tree_width"),
                       ({"eagle3_tree_width": 9}, "eagle3_tree_width"),
                       ({"eagle3_tree_width": 2, "eagle3_tree_nodes": 3}, "eagle3_tree_nodes"),
                       ({"eagle3_tree_width": 2, "eagle3_tree_nodes": 64}, "eagle3_tree_nodes"),
                       # a verify decode that does not fit one batch aborted llama.cpp (sampling a row
                       # of an earlier chunk; a context with more sequences than outputs)
                       ({"n_batch": 4}, "n_batch and n_ubatch must be at least 5"),
                       ({"n_ubatch": 3}, "n_batch and n_ubatch must be at least 5"),
                       ({"eagle3_tree_width": 3, "n_batch": 8}, "at least 13 .*eagle3_tree_nodes=12")]:
        with pytest.raises(ValueError, match=needle):
            Llama(str(targets["llama"]), n_ctx=64, verbose=False, eagle3_head=str(heads["llama"]), **kw)


def test_fast_header_reader_matches_gguf_py_and_rejects_damaged_files(tmp_path, heads):
    """check_head_gguf reads the head with gguf_header (gguf-py takes seconds on a real vocabulary):
    the same metadata and tensor directory as gguf-py, and a ConversionError (nothing else) for
    every truncation and for byte flips anywhere in the header."""
    import random

    from eagle3_convert.errors import ConversionError
    from eagle3_convert.gguf_header import read_gguf_header
    from eagle3_convert.target import gguf_metadata, open_gguf

    good = heads["llama"]
    header, reader = read_gguf_header(good), open_gguf(good)
    assert header.meta == gguf_metadata(reader)
    assert {t.name: (tuple(t.shape.tolist()), int(t.tensor_type), int(t.data_offset)) for t in reader.tensors} == \
        {t.name: (t.ne, t.type, t.offset) for t in header.tensors.values()}
    data = good.read_bytes()
    end = min(header.tensors.values(), key=lambda t: t.offset).offset  # the header's length (with padding)
    rng = random.Random(0)
    bad = tmp_path / "bad.gguf"
    for i in range(200):
        if i % 2:
            damaged = data[: rng.randrange(end)]
        else:
            damaged = bytearray(data)
            damaged[rng.randrange(end)] ^= 1 << rng.randrange(8)
        bad.write_bytes(bytes(damaged))
        try:
            read_gguf_header(bad)
        except ConversionError:
            pass
