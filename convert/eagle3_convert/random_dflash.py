"""An untrained DFlash head with a target's shapes, written as a z-lab checkpoint
(`DFlashDraftModel`: config.json with a `dflash_config`, model.safetensors).

Tensors are generated and written one at a time, a block of rows at a time, so a head at
Qwen3-8B-DFlash-b16's shape (about 1e9 parameters) never sits in memory.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

_ROWS = 1024  # rows generated per block
_ST_DTYPE = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


@dataclass(frozen=True)
class DFlashShape:
    hidden: int
    n_layers: int
    n_head: int
    n_kv_head: int
    head_dim: int
    intermediate: int
    vocab: int
    target_layer_ids: tuple[int, ...]  # z-lab convention: OUTPUT of target layer i (HF hidden_states[i + 1])
    num_target_layers: int
    block_size: int
    mask_token_id: int
    rope_theta: float
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 8192


# SmolLM2-135M (30 layers, hidden 576, 9/3 heads of 64, vocab 49152): 2 layers, 4 taps; no
# dedicated mask token in its vocabulary, so the last id stands in for it
SMOLLM2_135M_DFLASH = DFlashShape(hidden=576, n_layers=2, n_head=9, n_kv_head=3, head_dim=64, intermediate=1536,
                                  vocab=49152, target_layer_ids=(1, 10, 19, 27), num_target_layers=30,
                                  block_size=16, mask_token_id=49151, rope_theta=100000.0, rms_norm_eps=1e-5)
# z-lab/Qwen3-8B-DFlash-b16: 5 layers, 32/8 heads of 128, FFN 12288, taps [1, 9, 17, 25, 33] of 36
QWEN3_8B_DFLASH = DFlashShape(hidden=4096, n_layers=5, n_head=32, n_kv_head=8, head_dim=128, intermediate=12288,
                              vocab=151936, target_layer_ids=(1, 9, 17, 25, 33), num_target_layers=36,
                              block_size=16, mask_token_id=151669, rope_theta=1000000.0,
                              max_position_embeddings=40960)


def _tensor_shapes(s: DFlashShape) -> dict[str, tuple[int, ...]]:
    h, q, kv = s.hidden, s.n_head * s.head_dim, s.n_kv_head * s.head_dim
    out: dict[str, tuple[int, ...]] = {"fc.weight": (h, len(s.target_layer_ids) * h), "hidden_norm.weight": (h,),
                                       "norm.weight": (h,)}
    for i in range(s.n_layers):
        p = f"layers.{i}."
        out.update({p + "input_layernorm.weight": (h,), p + "self_attn.q_proj.weight": (q, h),
                    p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.v_proj.weight": (kv, h),
                    p + "self_attn.o_proj.weight": (h, q), p + "self_attn.q_norm.weight": (s.head_dim,),
                    p + "self_attn.k_norm.weight": (s.head_dim,), p + "post_attention_layernorm.weight": (h,),
                    p + "mlp.gate_proj.weight": (s.intermediate, h), p + "mlp.up_proj.weight": (s.intermediate, h),
                    p + "mlp.down_proj.weight": (h, s.intermediate)})
    return out


def _encode(a: np.ndarray, dtype: str) -> bytes:
    """float32 rows -> little-endian bytes of the stored type (bf16: round to nearest even)."""
    if dtype == "bf16":
        u = a.astype(np.float32).view(np.uint32)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2").tobytes()
    return a.astype("<f4" if dtype == "f32" else "<f2").tobytes()


def _blocks(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Random rows of one tensor: norms near 1, matrices with unit-variance outputs."""
    if len(shape) == 1:
        yield (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        return
    for start in range(0, shape[0], _ROWS):
        rows = min(_ROWS, shape[0] - start)
        yield (rng.standard_normal((rows, shape[1]), dtype=np.float32) / np.float32(np.sqrt(shape[1])))


def write_streamed_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str,
                               blocks: Callable[[str, tuple[int, ...]], Iterator[np.ndarray]]) -> None:
    """A safetensors file whose header is computed from the shapes, then each tensor's data
    written block by block as `blocks(name, shape)` yields them (in row order)."""
    item = 4 if dtype == "f32" else 2
    header, off = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * item
        header[name] = {"dtype": _ST_DTYPE[dtype], "shape": list(shape), "data_offsets": [off, off + size]}
        off += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in shapes.items():
            for block in blocks(name, shape):
                f.write(_encode(block, dtype))


def _config(s: DFlashShape, dtype: str) -> dict:
    return {
        "architectures": ["DFlashDraftModel"], "model_type": "qwen3", "hidden_size": s.hidden,
        "num_hidden_layers": s.n_layers, "num_attention_heads": s.n_head, "num_key_value_heads": s.n_kv_head,
        "head_dim": s.head_dim, "intermediate_size": s.intermediate, "hidden_act": "silu",
        "rms_norm_eps": s.rms_norm_eps, "rope_theta": s.rope_theta, "vocab_size": s.vocab,
        "max_position_embeddings": s.max_position_embeddings, "attention_bias": False, "tie_word_embeddings": False,
        "num_target_layers": s.num_target_layers, "block_size": s.block_size,
        "torch_dtype": {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype],
        "dflash_config": {"mask_token_id": s.mask_token_id, "target_layer_ids": list(s.target_layer_ids)},
    }


def write_random_dflash_head(directory: Path, shape: DFlashShape, dtype: str = "f32", seed: int = 0) -> Path:
    """A random DFlash head in the z-lab layout at `shape` (no embed_tokens / lm_head: the target's serve)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_streamed_safetensors(directory / "model.safetensors", _tensor_shapes(shape), dtype,
                               lambda name, s: _blocks(name, s, rng))
    (directory / "config.json").write_text(json.dumps(_config(shape, dtype), indent=2))
    return directory


def shape_summary(s: DFlashShape) -> str:
    return ", ".join(f"{k} {v}" for k, v in asdict(s).items())
