"""The canonical DFlash head: one config and one set of weights, whatever layout it came from.

DFlash (z-lab's block-diffusion drafter) reads the target's hidden states at several
layers ("taps"), fuses each context position's taps through fc + hidden_norm into one
row g, and injects K/V computed from g into every draft layer's cache. A draft block
[last token, MASK x (block-1)] then runs through the draft layers with non-causal
attention over (context rows, block rows) and predicts the block's tokens at once.

Conventions (the same as Eagle3Head's):
  - weights in HF orientation ([out, in] matrices), LazyTensor or float32 arrays;
  - `target_layers` in llama.cpp's convention: id L = the INPUT of target layer L (HF
    hidden_states[L]); z-lab's `target_layer_ids` count outputs (HF hidden_states[i + 1]),
    so id i there is i + 1 here; valid ids 1..n_layer-1;
  - d2t holds ABSOLUTE target ids (HF stores offsets);
  - the graph reads n_taps x hidden_size values per context row, so the head's hidden size
    is the target's (llama.cpp sizes fc's input from the head's own width).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .errors import ConversionError
from .head import _all_finite, check_attention_config

if TYPE_CHECKING:
    from .target import TargetInfo


@dataclass
class DFlashConfig:
    hidden_size: int                  # H, the head's width == the target's
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    vocab_size: int                   # target vocabulary
    draft_vocab_size: int             # Vd (== vocab_size when there is no d2t)
    target_layers: tuple[int, ...]    # llama.cpp "input of layer" ids, in fc's column order
    block_size: int                   # trained block: the last token + block_size-1 masks
    mask_token_id: int                # the MASK token filling the block after the last token
    max_position_embeddings: int = 4096
    rope_scaling: Optional[dict] = None  # None or canonical scaling (hf_config.py)

    @property
    def n_taps(self) -> int:
        return len(self.target_layers)


# per decoder layer: canonical field -> (GGUF suffix in blk.N.*, HF name inside layers.N.)
LAYER_TENSORS = {
    "input_layernorm": ("attn_norm", "input_layernorm.weight"),
    "q_proj": ("attn_q", "self_attn.q_proj.weight"),
    "k_proj": ("attn_k", "self_attn.k_proj.weight"),
    "v_proj": ("attn_v", "self_attn.v_proj.weight"),
    "o_proj": ("attn_output", "self_attn.o_proj.weight"),
    "q_norm": ("attn_q_norm", "self_attn.q_norm.weight"),
    "k_norm": ("attn_k_norm", "self_attn.k_norm.weight"),
    "post_attention_layernorm": ("ffn_norm", "post_attention_layernorm.weight"),
    "gate_proj": ("ffn_gate", "mlp.gate_proj.weight"),
    "up_proj": ("ffn_up", "mlp.up_proj.weight"),
    "down_proj": ("ffn_down", "mlp.down_proj.weight"),
}
# top level: canonical field -> (GGUF name, HF name); lm_head, embed_tokens and d2t are optional
TOP_TENSORS = {
    "fc": ("fc.weight", "fc.weight"),
    "hidden_norm": ("enc.output_norm.weight", "hidden_norm.weight"),
    "norm": ("output_norm.weight", "norm.weight"),
    "lm_head": ("output.weight", "lm_head.weight"),
    "embed_tokens": ("token_embd.weight", "embed_tokens.weight"),
    "d2t": ("d2t", "d2t"),
}
OPTIONAL_TOP = ("lm_head", "embed_tokens", "d2t")


def layer_shapes(c: DFlashConfig) -> dict[str, tuple[int, ...]]:
    h, ff = c.hidden_size, c.intermediate_size
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    return {"input_layernorm": (h,), "q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
            "q_norm": (c.head_dim,), "k_norm": (c.head_dim,), "post_attention_layernorm": (h,),
            "gate_proj": (ff, h), "up_proj": (ff, h), "down_proj": (h, ff)}


def top_shapes(c: DFlashConfig) -> dict[str, tuple[int, ...]]:
    h = c.hidden_size
    return {"fc": (h, c.n_taps * h), "hidden_norm": (h,), "norm": (h,), "lm_head": (c.draft_vocab_size, h),
            "embed_tokens": (c.vocab_size, h), "d2t": (c.draft_vocab_size,)}


@dataclass
class DFlashLayer:
    input_layernorm: Any              # [H]   norm of the block rows entering the layer
    q_proj: Any                       # [nh*hd, H]
    k_proj: Any                       # [nkv*hd, H]  applied to block rows AND fused context rows g
    v_proj: Any                       # [nkv*hd, H]
    o_proj: Any                       # [H, nh*hd]
    q_norm: Any                       # [hd]  per-head RMS norm before RoPE
    k_norm: Any                       # [hd]
    post_attention_layernorm: Any     # [H]
    gate_proj: Any                    # [ff, H]
    up_proj: Any                      # [ff, H]
    down_proj: Any                    # [H, ff]


@dataclass
class DFlashHead:
    config: DFlashConfig
    fc: Any                           # [H, n_taps*H]  taps concatenated in target_layers order
    hidden_norm: Any                  # [H]  RMS norm after fc (GGUF: enc.output_norm)
    norm: Any                         # [H]  final norm
    layers: list[DFlashLayer]
    lm_head: Any = None               # [Vd, H]; None: the target's output matrix
    embed_tokens: Any = None          # [V, H];  None: the target's token embedding
    d2t: Optional[np.ndarray] = None  # [Vd] int64 ABSOLUTE target ids
    extra: dict = field(default_factory=dict)  # provenance: layout, notes

    def validate(self) -> None:
        """Raises ConversionError naming the first inconsistent key or tensor."""
        c = self.config
        _check_config(c)
        if len(self.layers) != c.num_layers:
            raise ConversionError(f"the head has {len(self.layers)} decoder layers, config says {c.num_layers}")
        tops = top_shapes(c)
        for name in TOP_TENSORS:
            _check_tensor(name, getattr(self, name), tops[name])
        for i, layer in enumerate(self.layers):
            for name, shape in layer_shapes(c).items():
                _check_tensor(f"layers.{i}.{name}", getattr(layer, name), shape)
        _check_vocabulary(self)


def _check_config(c: DFlashConfig) -> None:
    check_attention_config(c, may_be_zero=("mask_token_id",))
    if not c.target_layers or any(int(i) < 1 for i in c.target_layers):
        raise ConversionError(f"target_layers must be layer ids >= 1 (llama.cpp: input of layer), "
                              f"got {list(c.target_layers)}")
    if c.block_size < 2:
        raise ConversionError(f"block_size {c.block_size}: a DFlash block holds the last token and at least one mask")
    if not 0 <= c.mask_token_id < c.vocab_size:
        raise ConversionError(f"mask_token_id {c.mask_token_id} is outside the vocabulary of {c.vocab_size} tokens")


def _check_tensor(name: str, t: Any, shape: tuple[int, ...]) -> None:
    if t is None:
        if name.split(".")[-1] in OPTIONAL_TOP:
            return
        raise ConversionError(f"tensor {name} is missing")
    if tuple(t.shape) != shape:
        raise ConversionError(f"tensor {name} has shape {tuple(t.shape)}, expected {shape} from the config")
    if name == "d2t":
        return  # integers: _check_vocabulary
    if t.dtype.kind != "f":
        raise ConversionError(f"tensor {name} holds {t.dtype} values: weights must be floating point")
    if not _all_finite(t):
        raise ConversionError(f"tensor {name} contains NaN or infinite values")


def _check_vocabulary(head: DFlashHead) -> None:
    c, d = head.config, head.d2t
    if d is not None:
        if d.dtype.kind not in "iu":
            raise ConversionError(f"tensor d2t must hold integers, got {d.dtype}")
        if d.min() < 0 or d.max() >= c.vocab_size:
            raise ConversionError(f"tensor d2t maps to target ids {int(d.min())}..{int(d.max())}, outside the "
                                  f"target vocabulary of {c.vocab_size}")
        if len(np.unique(d)) != len(d):
            raise ConversionError("tensor d2t maps two draft ids to the same target id")
        if head.lm_head is None:
            raise ConversionError("the head has a reduced draft vocabulary (d2t) but no lm_head")
    elif c.draft_vocab_size != c.vocab_size:
        raise ConversionError(f"draft_vocab_size {c.draft_vocab_size} differs from vocab_size {c.vocab_size} "
                              f"but the head has no d2t mapping")
    if head.embed_tokens is not None and head.lm_head is None:
        # llama.cpp's dflash loader falls back to token_embd as the output matrix
        raise ConversionError("the head has its own embed_tokens but no lm_head: llama.cpp would use its "
                              "embed_tokens as the output matrix; add the lm_head (or drop embed_tokens) "
                              "and convert again")


def check_against_target(config: DFlashConfig, target: "TargetInfo") -> None:
    """Raises ConversionError when the head cannot read this target's states or vocabulary."""
    where = f"target {target.source}"
    if config.hidden_size != target.n_embd:
        raise ConversionError(f"head hidden size {config.hidden_size} differs from the hidden size {target.n_embd} "
                              f"of {where}: llama.cpp's dflash graph reads {config.n_taps} x the head's width per "
                              f"context row, so the head must have been trained for a target of its own width")
    if config.vocab_size != target.n_vocab:
        raise ConversionError(f"head vocab_size {config.vocab_size} differs from the {target.n_vocab} tokens of {where}")
    bad = [i for i in config.target_layers if not 1 <= i <= target.n_layer - 1]
    if bad:
        raise ConversionError(f"target_layers {list(config.target_layers)} (llama.cpp: input of layer): id(s) {bad} "
                              f"are outside 1..{target.n_layer - 1} for {where} with {target.n_layer} layers")
