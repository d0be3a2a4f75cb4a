"""DFlashHead <-> llama.cpp `dflash` GGUF (the schema of llama-cpp-python 0.3.36's vendored
llama.cpp: src/models/dflash.cpp, src/llama-arch.cpp).

Conventions of the file:
  - general.architecture "dflash"; dflash.target_layers = llama.cpp ids (input of layer),
    in fc's column order; dflash.block_size; dflash.attention.causal = false;
  - matrices stored [out, in] (ggml ne = {in, out}); q/k NOT permuted: llama.cpp runs the
    dflash graph with NeoX RoPE, which is HF's rotate-half;
  - tensors fc.weight, enc.output_norm.weight (hidden_norm), output_norm.weight,
    blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, attn_q_norm, attn_k_norm,
    ffn_norm, ffn_gate, ffn_up, ffn_down}.weight; optional output.weight (else the target's,
    through the context's ctx_other), token_embd.weight (else the target's), d2t (I64,
    ABSOLUTE target ids: llama.cpp scatters the draft logits to the full vocabulary);
  - the target's tokenizer keys are copied, with tokenizer.ggml.mask_token_id the head's;
  - RoPE scaling as the eagle3 writer does it (rope_freqs tensor or the generic keys).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .dflash_head import LAYER_TENSORS, OPTIONAL_TOP, TOP_TENSORS, DFlashConfig, DFlashHead
from .errors import ConversionError
from .gguf_header import read_gguf_header
from .gguf_io import OutType, TensorPlan, _read_rope_scaling, _write_rope_scaling, read_tensor, write_kv, write_tensors
from .reference import rope_factors
from .target import TargetInfo

ARCH = "dflash"
MASK_KEY = "tokenizer.ggml.mask_token_id"


def layer_tensor_name(i: int, field_name: str) -> str:
    return f"blk.{i}.{LAYER_TENSORS[field_name][0]}.weight"


def _plan(head: DFlashHead) -> TensorPlan:
    """(canonical field, GGUF name, shape, rows(start, stop), whole) of every tensor to write;
    the canonical field decides the encoding (matrices in the outtype, vectors f32, d2t I64)."""
    def entry(field_name: str, name: str, t: Any) -> tuple:
        return (field_name, name, tuple(t.shape), lambda a, b, t=t: np.asarray(t[a:b]), len(t.shape) == 1)

    out = [entry(f, TOP_TENSORS[f][0], getattr(head, f)) for f in TOP_TENSORS if getattr(head, f) is not None]
    for i, layer in enumerate(head.layers):
        out += [entry(f, layer_tensor_name(i, f), getattr(layer, f)) for f in LAYER_TENSORS]
    factors = rope_factors(head.config)  # type: ignore[arg-type]  (duck-typed: head_dim, rope_theta, rope_scaling)
    if factors is not None:
        out.append(("rope_freqs", "rope_freqs.weight", factors.shape,
                    lambda a, b: factors[a:b].astype(np.float32), True))
    return out


def write_dflash_gguf(head: DFlashHead, target: TargetInfo, outfile: Path, outtype: OutType = "f16",
                      name: str = "DFlash head", progress: Optional[Callable[[str], None]] = None) -> None:
    import gguf

    head.validate()
    c = head.config
    w = gguf.GGUFWriter(str(outfile), ARCH)
    w.add_string("general.name", name)
    for key, value in (("context_length", c.max_position_embeddings), ("embedding_length", c.hidden_size),
                       ("feed_forward_length", c.intermediate_size), ("block_count", c.num_layers),
                       ("attention.head_count", c.num_attention_heads),
                       ("attention.head_count_kv", c.num_key_value_heads), ("attention.key_length", c.head_dim),
                       ("attention.value_length", c.head_dim), ("rope.dimension_count", c.head_dim),
                       ("block_size", c.block_size)):
        w.add_uint32(f"{ARCH}.{key}", int(value))
    w.add_float32(f"{ARCH}.rope.freq_base", c.rope_theta)
    w.add_float32(f"{ARCH}.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
    w.add_bool(f"{ARCH}.attention.causal", False)
    w.add_array(f"{ARCH}.target_layers", [int(i) for i in c.target_layers])
    _write_rope_scaling(w, c, ARCH)
    w.add_uint32("general.file_type", {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}[outtype])
    for key, value in target.tokenizer.items():
        if key != MASK_KEY:
            write_kv(w, key, value)
    w.add_uint32(MASK_KEY, c.mask_token_id)
    write_tensors(w, _plan(head), outtype, progress)
    w.close()


def read_dflash_config(meta: dict[str, Any], path: Path, draft_vocab_size: int) -> DFlashConfig:
    if meta.get("general.architecture") != ARCH:
        raise ConversionError(f"{path}: general.architecture is {meta.get('general.architecture')!r}, not "
                              f"'dflash': this file is not a DFlash head (convert one with convert-eagle3-gguf)")

    def get(key: str) -> Any:
        if key not in meta:
            raise ConversionError(f"{path}: DFlash GGUF lacks key {key}")
        return meta[key]

    layers = get(f"{ARCH}.target_layers")
    if not isinstance(layers, list) or not layers:
        raise ConversionError(f"{path}: key {ARCH}.target_layers must hold layer ids, got {layers!r}")
    n_vocab = len(get("tokenizer.ggml.tokens"))
    return DFlashConfig(
        hidden_size=int(get(f"{ARCH}.embedding_length")), intermediate_size=int(get(f"{ARCH}.feed_forward_length")),
        num_layers=int(get(f"{ARCH}.block_count")), num_attention_heads=int(get(f"{ARCH}.attention.head_count")),
        num_key_value_heads=int(get(f"{ARCH}.attention.head_count_kv")),
        head_dim=int(get(f"{ARCH}.attention.key_length")),
        rms_norm_eps=float(get(f"{ARCH}.attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get(f"{ARCH}.rope.freq_base", 10000.0)), vocab_size=n_vocab,
        draft_vocab_size=draft_vocab_size or n_vocab, target_layers=tuple(int(i) for i in layers),
        block_size=int(get(f"{ARCH}.block_size")), mask_token_id=int(get(MASK_KEY)),
        max_position_embeddings=int(meta.get(f"{ARCH}.context_length", 4096)),
        rope_scaling=_read_rope_scaling(meta, ARCH))


class _LayerView:
    """One decoder layer of a DFlash GGUF: attributes named like DFlashLayer fields, read on access."""

    def __init__(self, weights: "DFlashGgufWeights", index: int):
        self._w, self._i = weights, index

    def __getattr__(self, field_name: str) -> np.ndarray:
        if field_name not in LAYER_TENSORS:
            raise AttributeError(field_name)
        return self._w.read(layer_tensor_name(self._i, field_name))


class DFlashGgufWeights:
    """A DFlash GGUF's weights read on demand from the memory-mapped file: attributes named like
    DFlashHead fields (None when an optional tensor is absent), `layers[i].<field>`, and `rows`
    for some rows of a matrix. The converter's read-back check runs on it."""

    def __init__(self, path: Path):
        header = read_gguf_header(Path(path))
        self.path, self._tensors, self._size = header.path, header.tensors, header.size
        d2t = self._tensors.get("d2t")
        self.config = read_dflash_config(header.meta, self.path, d2t.ne[0] if d2t is not None else 0)
        missing = [n for f, (n, _) in TOP_TENSORS.items() if f not in OPTIONAL_TOP and n not in self._tensors]
        missing += [layer_tensor_name(i, f) for i in range(self.config.num_layers) for f in LAYER_TENSORS
                    if layer_tensor_name(i, f) not in self._tensors]
        if missing:
            raise ConversionError(f"{self.path}: DFlash GGUF is missing tensor(s) {', '.join(missing)}")
        if "rope_freqs.weight" in self._tensors:
            self.config.rope_scaling = {"rope_type": "freqs",
                                        "factors": self.read("rope_freqs.weight").astype(float).tolist()}
        self.layers = [_LayerView(self, i) for i in range(self.config.num_layers)]

    def __getattr__(self, field_name: str) -> Optional[np.ndarray]:
        if field_name not in TOP_TENSORS:
            raise AttributeError(field_name)
        name = TOP_TENSORS[field_name][0]
        return self.read(name) if name in self._tensors else None

    def rows(self, field_name: str, rows: np.ndarray) -> np.ndarray:
        return self.read(TOP_TENSORS[field_name][0], rows)

    def read(self, name: str, rows: Optional[np.ndarray] = None) -> np.ndarray:
        return read_tensor(self.path, self._tensors[name], self._size, rows)
