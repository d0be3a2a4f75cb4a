"""Eagle3Head <-> llama.cpp `eagle3` GGUF (the schema of llama.cpp 0c1e57098).

Conventions of the file:
  - matrices are stored [out, in] (ggml ne = {in, out}); q/k rows are permuted like
    llama GGUFs because eagle3 uses RoPE type NORM;
  - d2t holds ABSOLUTE target ids as I64; t2d is not stored;
  - the target's tokenizer keys are copied (llama.cpp needs the vocabulary);
  - eagle3.target_layers uses the "input of layer" convention;
  - RoPE scaling through llama.cpp's generic keys, which its eagle3 loader honours:
    llama3 as the rope_freqs tensor (divisors per frequency), linear and yarn as
    eagle3.rope.scaling.{type,factor,original_context_length,attn_factor}. llama.cpp
    multiplies YaRN's cos/sin by get_mscale(factor) * attn_factor, so attn_factor holds
    HF's attention_factor / get_mscale(factor).

A head llama.cpp's eagle3 graph cannot run (head.is_variant: 4-5 taps, norm_output, fc_norm,
q/k norms, biases) is written as arch `eagle3x` (VARIANT_ARCH), which upstream llama.cpp refuses
to load: the same keys under `eagle3x.`, plus eagle3x.norm_output and eagle3x.fc_norm, the
variant tensors of VARIANT_TENSOR_NAMES, and q/k rows NOT permuted (this runtime's graph,
csrc/head_graph.cpp, applies NEOX (rotate-half) RoPE, and q/k norms and biases stay in HF order).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np

from .errors import ConversionError
from .gguf_header import TensorInfo, read_gguf_header
from .head import MAX_TAPS, MIN_TAPS, Eagle3Config, Eagle3Head, check_against_target, expected_shapes, is_variant
from .hf_config import yarn_mscale
from .reference import rope_factors
from .target import TargetInfo

ARCH = "eagle3"
VARIANT_ARCH = "eagle3x"
OutType = Literal["f32", "f16", "bf16", "q8_0"]

# canonical field -> GGUF tensor name
TENSOR_NAMES = {
    "fc": "fc.weight",
    "enc_norm": "enc.output_norm.weight",
    "input_layernorm": "blk.0.attn_norm.weight",
    "hidden_norm": "blk.0.attn_norm_2.weight",
    "q_proj": "blk.0.attn_q.weight",
    "k_proj": "blk.0.attn_k.weight",
    "v_proj": "blk.0.attn_v.weight",
    "o_proj": "blk.0.attn_output.weight",
    "post_attention_layernorm": "blk.0.ffn_norm.weight",
    "gate_proj": "blk.0.ffn_gate.weight",
    "up_proj": "blk.0.ffn_up.weight",
    "down_proj": "blk.0.ffn_down.weight",
    "norm": "output_norm.weight",
    "lm_head": "output.weight",
    "embed_tokens": "token_embd.weight",
    "d2t": "d2t",
}
VARIANT_TENSOR_NAMES = {
    "tap_norm": "enc.tap_norm.weight",
    "q_norm": "blk.0.attn_q_norm.weight",
    "k_norm": "blk.0.attn_k_norm.weight",
    "q_bias": "blk.0.attn_q.bias",
    "k_bias": "blk.0.attn_k.bias",
    "v_bias": "blk.0.attn_v.bias",
    "o_bias": "blk.0.attn_output.bias",
    "gate_bias": "blk.0.ffn_gate.bias",
    "up_bias": "blk.0.ffn_up.bias",
    "down_bias": "blk.0.ffn_down.bias",
}
ALL_TENSOR_NAMES = TENSOR_NAMES | VARIANT_TENSOR_NAMES
_MATRICES = {"fc", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head", "embed_tokens"}


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half rows -> llama.cpp NORM (interleaved pairs) rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_kv(w: Any, key: str, value: Any) -> None:
    """A metadata value as GGUF types it in llama.cpp files (ints as u32, lists as arrays)."""
    if isinstance(value, list):
        w.add_array(key, value)
    elif isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    else:
        w.add_string(key, str(value))


def _encoding(name: str, shape: tuple[int, ...], outtype: OutType) -> tuple[Any, Any]:
    """(numpy dtype, gguf quantization type or None) a canonical tensor is written as."""
    import gguf

    if name == "d2t":
        return np.int64, None
    if name not in _MATRICES or outtype == "f32":
        return np.float32, None
    if outtype == "f16" or (outtype == "q8_0" and shape[-1] % 32):  # Q8_0 needs rows of 32k values
        return np.float16, None
    return np.uint8, gguf.GGMLQuantizationType.BF16 if outtype == "bf16" else gguf.GGMLQuantizationType.Q8_0


def _encode_tensor(w: np.ndarray, dtype: Any, qtype: Any) -> np.ndarray:
    import gguf

    if qtype is None:
        return np.ascontiguousarray(w, dtype=dtype)
    return gguf.quants.quantize(np.ascontiguousarray(w, dtype=np.float32), qtype)


RowReader = Callable[[int, int], np.ndarray]
TensorPlan = list[tuple[str, str, tuple[int, ...], RowReader, bool]]


def _tensors_to_write(head: Eagle3Head) -> TensorPlan:
    """(canonical field, GGUF name, shape, rows(start, stop) in file orientation, whole): the writer
    asks for CHUNK_ROWS rows at a time, or for every row at once when `whole` (q/k: the
    permutation works per head; vectors)."""
    c = head.config
    variant = is_variant(head)
    n_heads = {} if variant else {"q_proj": c.num_attention_heads, "k_proj": c.num_key_value_heads}
    out = []
    for field_name, tensor_name in (ALL_TENSOR_NAMES if variant else TENSOR_NAMES).items():
        t = getattr(head, field_name)
        if t is None:
            continue
        if field_name in n_heads:
            rows = lambda a, b, t=t, n=n_heads[field_name]: permute_qk(np.asarray(t), n)[a:b]
        else:
            rows = lambda a, b, t=t: np.asarray(t[a:b])
        out.append((field_name, tensor_name, tuple(t.shape), rows, field_name in n_heads or len(t.shape) == 1))
    f = rope_factors(c)
    if f is not None:
        out.append(("rope_freqs", "rope_freqs.weight", f.shape, lambda a, b: f[a:b].astype(np.float32), True))
    return out


class _RowChunks:
    """A tensor's file data, encoded CHUNK_ROWS rows at a time while it is written.
    GGUFWriter.write_tensor_data asks its argument only for .nbytes and .tofile(file) (it
    byteswaps only for a big-endian file, which this writer never makes), so no matrix of a
    real head is ever converted whole."""

    CHUNK_ROWS = 4096

    def __init__(self, rows: RowReader, n_rows: int, nbytes: int, encode: Callable[[np.ndarray], np.ndarray],
                 whole: bool):
        self.nbytes, self._rows, self._n, self._encode = nbytes, rows, n_rows, encode
        self._chunk = max(n_rows, 1) if whole else self.CHUNK_ROWS

    def tofile(self, f: Any) -> None:
        for start in range(0, max(self._n, 1), self._chunk):
            self._encode(self._rows(start, min(start + self._chunk, self._n))).tofile(f)


PROGRESS_BYTES = 64 << 20  # tensors at least this large get a progress line while written


def write_tensors(w: Any, tensors: TensorPlan, outtype: OutType, progress: Optional[Callable[[str], None]] = None) -> None:
    """Tensor infos first (shapes and sizes need no data), then the data one tensor at a time.
    `tensors`: (canonical field, GGUF name, shape, rows(start, stop), whole) as _tensors_to_write
    makes them; the canonical field decides the encoding (_encoding). Progress (if given) gets a
    line per tensor of PROGRESS_BYTES or more (a large head's slow part)."""
    import gguf

    plan = []
    for field_name, name, shape, rows, whole in tensors:
        dtype, qtype = _encoding(field_name, shape, outtype)
        if qtype is None:
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            w.add_tensor_info(name, shape, np.dtype(dtype), nbytes)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
            nbytes = int(np.prod(byte_shape))
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=qtype)
        encode = lambda a, dtype=dtype, qtype=qtype: _encode_tensor(a, dtype, qtype)
        plan.append((name, shape, _RowChunks(rows, shape[0], nbytes, encode, whole)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    total, done = sum(d.nbytes for _, _, d in plan), 0
    for name, shape, data in plan:
        if progress is not None and data.nbytes >= PROGRESS_BYTES:
            progress(f"writing {name} {list(shape)} ({done / 1e9:.2f} of {total / 1e9:.2f} GB written)")
        w.write_tensor_data(data)
        done += data.nbytes


def write_head_gguf(head: Eagle3Head, target: TargetInfo, outfile: Path, outtype: OutType = "f16",
                    name: str = "EAGLE-3 head", progress: Optional[Callable[[str], None]] = None) -> None:
    import gguf

    head.validate()
    c = head.config
    arch = VARIANT_ARCH if is_variant(head) else ARCH
    w = gguf.GGUFWriter(str(outfile), arch)
    w.add_string("general.name", name)
    w.add_uint32(f"{arch}.context_length", c.max_position_embeddings)
    w.add_uint32(f"{arch}.embedding_length", c.hidden_size)
    w.add_uint32(f"{arch}.feed_forward_length", c.intermediate_size)
    w.add_uint32(f"{arch}.block_count", 1)
    w.add_uint32(f"{arch}.attention.head_count", c.num_attention_heads)
    w.add_uint32(f"{arch}.attention.head_count_kv", c.num_key_value_heads)
    w.add_uint32(f"{arch}.attention.key_length", c.head_dim)
    w.add_uint32(f"{arch}.attention.value_length", c.head_dim)
    w.add_uint32(f"{arch}.rope.dimension_count", c.head_dim)
    w.add_float32(f"{arch}.rope.freq_base", c.rope_theta)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
    w.add_uint32(f"{arch}.vocab_size", c.vocab_size)
    w.add_array(f"{arch}.target_layers", [int(i) for i in c.target_layers])
    w.add_uint32(f"{arch}.target_hidden_size", c.target_hidden_size)
    w.add_bool(f"{arch}.norm_before_residual", c.norm_before_residual)
    w.add_bool(f"{arch}.norm_before_fc", c.norm_before_fc)
    if arch == VARIANT_ARCH:
        w.add_bool(f"{arch}.norm_output", c.norm_output)
        w.add_bool(f"{arch}.fc_norm", c.fc_norm)
    _write_rope_scaling(w, c, arch)
    w.add_uint32("general.file_type", {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}[outtype])
    for key, value in target.tokenizer.items():
        write_kv(w, key, value)

    write_tensors(w, _tensors_to_write(head), outtype, progress)
    w.close()


def _write_rope_scaling(w: Any, c: Any, arch: str = ARCH) -> None:
    """c: a config with rope_scaling (Eagle3Config or DFlashConfig); arch: the key prefix."""
    s = c.rope_scaling or {}
    kind = s.get("rope_type")
    if kind not in ("linear", "yarn"):
        return  # none, or llama3 / freqs: the rope_freqs tensor
    w.add_string(f"{arch}.rope.scaling.type", kind)
    w.add_float32(f"{arch}.rope.scaling.factor", float(s["factor"]))
    if kind == "yarn":
        w.add_uint32(f"{arch}.rope.scaling.original_context_length", int(s["original_max_position_embeddings"]))
        w.add_float32(f"{arch}.rope.scaling.attn_factor", float(s["attention_factor"]) / yarn_mscale(float(s["factor"])))


def _read_rope_scaling(meta: dict[str, Any], arch: str = ARCH) -> Optional[dict]:
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    if kind in ("none", "linear") and float(meta.get(f"{arch}.rope.scaling.factor", 1.0)) == 1.0:
        return None
    factor = float(meta.get(f"{arch}.rope.scaling.factor", 1.0))
    if kind == "linear":
        return {"rope_type": "linear", "factor": factor}
    if kind == "yarn":
        attn = float(meta.get(f"{arch}.rope.scaling.attn_factor", 1.0)) * yarn_mscale(factor)
        return {"rope_type": "yarn", "factor": factor, "attention_factor": attn,
                "original_max_position_embeddings": int(meta.get(f"{arch}.rope.scaling.original_context_length",
                                                                 meta.get(f"{arch}.context_length", 4096)))}
    raise ConversionError(f"key {arch}.rope.scaling.type is {kind!r}: this converter writes none, linear or yarn")


def read_head_config(meta: dict[str, Any], path: Path, draft_vocab_size: int) -> Eagle3Config:
    arch = meta.get("general.architecture")
    if arch not in ("eagle3", VARIANT_ARCH):
        raise ConversionError(f"{path}: general.architecture is {arch!r}, not 'eagle3' or '{VARIANT_ARCH}': this "
                              f"file is not an EAGLE-3 head (convert one with convert-eagle3-gguf)")

    def get(key: str) -> Any:
        full = f"{arch}.{key}"
        if full not in meta:
            raise ConversionError(f"{path}: EAGLE-3 GGUF lacks key {full}")
        return meta[full]

    layers = get("target_layers")
    n_taps = (3, 3) if arch == ARCH else (MIN_TAPS, MAX_TAPS)
    if not isinstance(layers, list) or not n_taps[0] <= len(layers) <= n_taps[1]:
        raise ConversionError(f"{path}: key {arch}.target_layers must hold {n_taps[0]} to {n_taps[1]} layer ids, "
                              f"got {layers!r}")
    hd = int(get("embedding_length"))
    n_head = int(get("attention.head_count"))
    n_vocab = int(meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", [])))
    return Eagle3Config(
        hidden_size=hd,
        intermediate_size=int(get("feed_forward_length")),
        num_attention_heads=n_head,
        num_key_value_heads=int(meta.get(f"{arch}.attention.head_count_kv", n_head)),
        head_dim=int(meta.get(f"{arch}.attention.key_length", hd // max(n_head, 1))),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        target_hidden_size=int(get("target_hidden_size")),
        vocab_size=n_vocab,
        draft_vocab_size=draft_vocab_size or n_vocab,
        target_layers=tuple(int(i) for i in layers),
        max_position_embeddings=int(meta.get(f"{arch}.context_length", 4096)),
        norm_before_residual=bool(meta.get(f"{arch}.norm_before_residual", False)),
        norm_before_fc=bool(meta.get(f"{arch}.norm_before_fc", False)),
        norm_output=bool(meta.get(f"{arch}.norm_output", False)),
        fc_norm=bool(meta.get(f"{arch}.fc_norm", False)),
        rope_scaling=_read_rope_scaling(meta, arch),
    )


OPTIONAL_TENSORS = frozenset({"enc_norm", "lm_head", "embed_tokens", "d2t"})


def _check_layout(path: Path, meta: dict[str, Any], tensor_names: set[str], d2t_rows: int) -> Eagle3Config:
    """The head's config; raises ConversionError for a file llama.cpp would reject or abort on."""
    config = read_head_config(meta, path, d2t_rows)
    tokens = meta.get("tokenizer.ggml.tokens")
    # llama.cpp loads the head's copy of the target tokenizer and aborts on duplicate tokens
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ConversionError(f"{path}: tokenizer.ggml.tokens is missing or damaged; convert the head again")
    if len(set(tokens)) != len(tokens):
        raise ConversionError(f"{path}: tokenizer.ggml.tokens has duplicate entries (a damaged file); "
                              f"convert the head again")
    missing = sorted(n for f, n in TENSOR_NAMES.items() if f not in OPTIONAL_TENSORS and n not in tensor_names)
    if missing:
        raise ConversionError(f"{path}: EAGLE-3 GGUF is missing tensor(s) {', '.join(missing)}")
    return config


class GgufWeights:
    """A head GGUF's weights read on demand from the memory-mapped file: an attribute named like an
    Eagle3Head field is that tensor (HF orientation, float32, q/k un-permuted; d2t int64; None when
    absent), `rows` reads only some rows. The converter's read-back check runs on it, so it never
    holds a second copy of the head."""

    def __init__(self, path: Path):
        header = read_gguf_header(Path(path))
        self.path, self._tensors, self._size = header.path, header.tensors, header.size
        d2t = self._tensors.get("d2t")
        self.config = _check_layout(self.path, header.meta, set(self._tensors), d2t.ne[0] if d2t is not None else 0)
        self.variant = header.meta.get("general.architecture") == VARIANT_ARCH
        if "rope_freqs.weight" in self._tensors:
            self.config.rope_scaling = {"rope_type": "freqs",
                                        "factors": self._read("rope_freqs.weight").astype(float).tolist()}

    def has(self, field_name: str) -> bool:
        return ALL_TENSOR_NAMES[field_name] in self._tensors

    def __getattr__(self, field_name: str) -> Optional[np.ndarray]:
        if field_name not in ALL_TENSOR_NAMES:
            raise AttributeError(field_name)
        return self.rows(field_name) if self.has(field_name) else None

    def rows(self, field_name: str, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """The tensor, or only `rows` of a matrix (q/k rows only whole: they are stored permuted)."""
        t = self._read(ALL_TENSOR_NAMES[field_name], rows)
        if field_name == "d2t":
            return t
        if rows is None and field_name in ("q_proj", "k_proj") and not self.variant:
            c = self.config
            t = unpermute_qk(t, c.num_attention_heads if field_name == "q_proj" else c.num_key_value_heads)
        return t

    def _read(self, name: str, rows: Optional[np.ndarray] = None) -> np.ndarray:
        return read_tensor(self.path, self._tensors[name], self._size, rows)


def read_tensor(path: Path, t: TensorInfo, file_size: int, rows: Optional[np.ndarray] = None) -> np.ndarray:
    """A tensor of a GGUF file (or only `rows` of it) in NumPy order: I64 as int64, every other
    type dequantized to float32; read from a memory map of the file."""
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.type)]
    n_rows, row_bytes = int(np.prod(t.ne[1:])), t.ne[0] // block * type_size
    if t.offset + n_rows * row_bytes > file_size:
        raise ConversionError(f"{path}: tensor {t.name} runs past the end of the file (truncated?)")
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=t.offset, shape=(n_rows, row_bytes))
    picked = data if rows is None else data[rows]  # the mapping itself, or a copy of some rows
    shape = tuple(reversed(t.ne)) if rows is None else (len(rows), *reversed(t.ne[:-1]))
    if t.type == gguf.GGMLQuantizationType.I64:
        return picked.view("<i8").reshape(shape).astype(np.int64)
    values = gguf.quants.dequantize(picked, gguf.GGMLQuantizationType(t.type)).reshape(shape)
    return values.astype(np.float32, copy=False)


def read_head_gguf(path: Path) -> Eagle3Head:
    """The head in a GGUF file, weights dequantized to float32 and q/k un-permuted."""
    w = GgufWeights(path)
    head = Eagle3Head(config=w.config, **{f: w.rows(f) for f in ALL_TENSOR_NAMES if w.has(f)})
    head.validate()
    return head


@dataclass
class HeadFile:
    """What the runtime needs from a head GGUF, checked without loading the weights."""
    config: Eagle3Config
    d2t: Optional[np.ndarray]  # absolute target ids of the draft vocabulary; None: the full vocabulary
    variant: bool = False      # arch eagle3x: runs in this runtime's graph, not llama.cpp's


def check_head_gguf(path: Path, target: TargetInfo) -> HeadFile:
    """Raises ConversionError naming the key or tensor that makes the file unusable with this target
    (reads the metadata and the tensor directory, and of the data only d2t)."""
    header = read_gguf_header(Path(path))
    path, by_name = header.path, header.tensors
    d2t_t = by_name.get("d2t")
    config = _check_layout(path, header.meta, set(by_name), d2t_t.ne[0] if d2t_t is not None else 0)
    shapes = expected_shapes(config)
    for field_name, tensor_name in ALL_TENSOR_NAMES.items():
        t = by_name.get(tensor_name)
        if t is None:
            continue
        shape = tuple(reversed(t.ne))
        if shape != shapes[field_name]:
            raise ConversionError(f"{path}: tensor {tensor_name} has shape {shape}, expected {shapes[field_name]}")
    if config.norm_before_fc and "enc.output_norm.weight" not in by_name:
        raise ConversionError(f"{path}: norm_before_fc is set but tensor enc.output_norm.weight is missing")
    if config.fc_norm and VARIANT_TENSOR_NAMES["tap_norm"] not in by_name:
        raise ConversionError(f"{path}: fc_norm is set but tensor {VARIANT_TENSOR_NAMES['tap_norm']} is missing")
    d2t = None
    if d2t_t is not None:
        import gguf

        if d2t_t.type != gguf.GGMLQuantizationType.I64:
            kind = gguf.GGMLQuantizationType(d2t_t.type).name if d2t_t.type in set(gguf.GGMLQuantizationType) \
                else f"type {d2t_t.type}"
            raise ConversionError(f"{path}: tensor d2t must be I64 (absolute target ids), got {kind}")
        d2t = header.read(d2t_t, np.int64).astype(np.int64)
        if len(d2t) and (d2t.min() < 0 or d2t.max() >= target.n_vocab):
            raise ConversionError(f"{path}: tensor d2t maps to target ids {int(d2t.min())}..{int(d2t.max())}, "
                                  f"outside the {target.n_vocab} tokens of the target")
        if len(np.unique(d2t)) != len(d2t):
            raise ConversionError(f"{path}: tensor d2t maps two draft ids to the same target id")
    check_against_target(config, target, has_embed_tokens="token_embd.weight" in by_name)
    return HeadFile(config=config, d2t=d2t, variant=header.meta.get("general.architecture") == VARIANT_ARCH)
