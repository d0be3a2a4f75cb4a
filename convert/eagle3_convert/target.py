"""What the converter and the runtime need to know about the target model.

From a GGUF file (what llama-cpp-python users have) or an HF model directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConversionError


@dataclass
class TargetInfo:
    arch: str
    n_layer: int
    n_embd: int
    n_vocab: int
    source: str
    tokenizer: dict[str, Any] = field(default_factory=dict)  # GGUF "tokenizer.*" keys, copied into the head


def _field_value(reader: Any, f: Any) -> Any:
    """A GGUF metadata field as a Python scalar, string or list."""
    import gguf

    t = f.types[0] if f.types else None
    if t == gguf.GGUFValueType.ARRAY:
        sub = f.types[1] if len(f.types) > 1 else None
        if sub == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if t == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace")
    return f.parts[f.data[0]].tolist()[0]


def open_gguf(path: Path) -> Any:
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such GGUF file")
    try:
        return gguf.GGUFReader(str(path), "r")
    except Exception as e:  # truncated, bit-flipped or not a GGUF at all
        raise ConversionError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def gguf_metadata(reader: Any) -> dict[str, Any]:
    return {name: _field_value(reader, f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}


def target_from_gguf(path: Path) -> TargetInfo:
    meta = gguf_metadata(open_gguf(path))
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ConversionError(f"{path}: GGUF without general.architecture")
    if arch in ("eagle3", "dflash"):
        raise ConversionError(f"{path}: this is an {'EAGLE-3' if arch == 'eagle3' else 'DFlash'} head, not a target model")
    try:
        n_layer = int(meta[f"{arch}.block_count"])
        n_embd = int(meta[f"{arch}.embedding_length"])
        tokens = meta["tokenizer.ggml.tokens"]
    except KeyError as e:
        raise ConversionError(f"{path}: target GGUF lacks key {e.args[0]}") from None
    tok = {k: v for k, v in meta.items() if k.startswith("tokenizer.")}
    return TargetInfo(arch=arch, n_layer=n_layer, n_embd=n_embd, n_vocab=len(tokens), source=str(path), tokenizer=tok)


def target_from_hf_dir(path: Path) -> TargetInfo:
    """Target described by an HF directory: config.json, and tokenizer.json (BPE) for the vocabulary."""
    path = Path(path)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: cannot read the target's config.json ({e})") from None
    if "text_config" in cfg:
        cfg = {**cfg, **cfg["text_config"]}
    try:
        n_layer, n_embd, n_vocab = int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]), int(cfg["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConversionError(f"{path}/config.json: missing or invalid key {e}") from None
    arch = str(cfg.get("model_type", "unknown"))
    return TargetInfo(arch=arch, n_layer=n_layer, n_embd=n_embd, n_vocab=n_vocab, source=str(path),
                      tokenizer=_tokenizer_from_hf(path, n_vocab))


def _tokenizer_from_hf(path: Path, n_vocab: int) -> dict[str, Any]:
    """GGUF tokenizer keys from a byte-level BPE tokenizer.json (Llama 3, Qwen, SmolLM, ...)."""
    tj = path / "tokenizer.json"
    try:
        tok = json.loads(tj.read_text())
        model = tok["model"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise ConversionError(f"{tj}: cannot read a tokenizer ({e}); pass the target GGUF with --target instead") from None
    if model.get("type") != "BPE":
        raise ConversionError(f"{tj}: only BPE tokenizers can be converted from an HF directory; "
                              f"pass the target GGUF with --target instead")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [5] * n_vocab  # UNUSED until seen
    for t, i in model["vocab"].items():
        if 0 <= i < n_vocab:
            tokens[i], types[i] = t, 1
    for a in tok.get("added_tokens", []):
        i = a.get("id", -1)
        if 0 <= i < n_vocab:
            tokens[i], types[i] = a["content"], 3 if a.get("special") else 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges}


def load_target(spec: str | Path) -> TargetInfo:
    p = Path(spec)
    if p.is_dir():
        return target_from_hf_dir(p)
    return target_from_gguf(p)


def dequantize_tensor(t: Any) -> np.ndarray:
    """A GGUF tensor's values in NumPy order ([out, in] for matrices), dequantized."""
    import gguf

    raw = np.asarray(t.data)
    integer = t.tensor_type in (gguf.GGMLQuantizationType.I64, gguf.GGMLQuantizationType.I32,
                                gguf.GGMLQuantizationType.I16, gguf.GGMLQuantizationType.I8)
    a = raw if integer else gguf.quants.dequantize(raw, t.tensor_type)
    return a.reshape(tuple(int(x) for x in reversed(t.shape.tolist())))


def gguf_tensor(reader: Any, name: str) -> np.ndarray | None:
    """A tensor of a GGUF file as float32, or None."""
    for t in reader.tensors:
        if t.name == name:
            return dequantize_tensor(t).astype(np.float32)
    return None


def output_rows(target: TargetInfo, rows: np.ndarray) -> np.ndarray:
    """Rows of the target's output matrix (its token embedding when the GGUF ties them, as llama.cpp
    does) as float32 [len(rows), n_embd]; reads only those rows of the file."""
    import gguf

    path = Path(target.source)
    if not path.is_file():
        raise ConversionError("the head has no lm_head and a reduced draft vocabulary, so its lm_head is cut from "
                              "the target's output matrix: pass the target GGUF with --target")
    by_name = {t.name: t for t in open_gguf(path).tensors}
    t = by_name.get("output.weight") or by_name.get("token_embd.weight")
    if t is None:
        raise ConversionError(f"{path}: target GGUF has neither output.weight nor token_embd.weight")
    picked = np.asarray(t.data)[np.asarray(rows, dtype=np.int64)]  # quantized: [rows, bytes per row]
    return gguf.quants.dequantize(picked, t.tensor_type).reshape(len(rows), -1).astype(np.float32)
