"""The canonical EAGLE-3 head: one config and one set of weights, whatever layout it came from.

Weights are kept in HF orientation ([out, in] matrices), float32, with q/k NOT
permuted; the GGUF writer applies llama.cpp's conventions. A head read from a
safetensors checkpoint holds its matrices as checkpoint.LazyTensor (shape known,
values read when used, np.asarray gives the array), so a real head is never in
memory whole. `target_layers` always
uses llama.cpp's convention: id L = the INPUT of target layer L (= HF
hidden_states[L]), valid ids 1..n_layer-1.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .errors import ConversionError

if TYPE_CHECKING:
    from .target import TargetInfo


@dataclass
class Eagle3Config:
    hidden_size: int                    # Hd, the head's width
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    target_hidden_size: int             # Ht
    vocab_size: int                     # target vocabulary
    draft_vocab_size: int               # Vd (== vocab_size when there is no d2t)
    target_layers: tuple[int, ...]      # 3 (llama.cpp's eagle3 graph) .. MAX_TAPS (this runtime's graph)
    max_position_embeddings: int = 4096
    rope_scaling: Optional[dict] = None  # None or canonical scaling (hf_config.py: llama3, linear, yarn, freqs)
    norm_before_residual: bool = False
    norm_before_fc: bool = False
    norm_output: bool = False           # the state fed to the next step is norm(h), not h (speculators 0.7)
    fc_norm: bool = False               # one RMSNorm per tap before fc (tensor tap_norm)

    @property
    def n_taps(self) -> int:
        return len(self.target_layers)


MIN_TAPS, MAX_TAPS = 3, 5
# the variant tensors llama.cpp's eagle3 graph has no place for (see is_variant)
VARIANT_TENSORS = ("tap_norm", "q_norm", "k_norm", "q_bias", "k_bias", "v_bias", "o_bias",
                   "gate_bias", "up_bias", "down_bias")


def expected_shapes(c: Eagle3Config) -> dict[str, tuple[int, ...]]:
    """Shape of every canonical tensor (HF orientation) implied by the config."""
    hd, ff, ht = c.hidden_size, c.intermediate_size, c.target_hidden_size
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    nt = c.n_taps * ht
    return {
        "fc": (hd, nt), "input_layernorm": (hd,), "hidden_norm": (hd,),
        "q_proj": (q, 2 * hd), "k_proj": (kv, 2 * hd), "v_proj": (kv, 2 * hd), "o_proj": (hd, q),
        "post_attention_layernorm": (hd,), "gate_proj": (ff, hd), "up_proj": (ff, hd),
        "down_proj": (hd, ff), "norm": (hd,),
        "lm_head": (c.draft_vocab_size, hd), "embed_tokens": (c.vocab_size, hd),
        "d2t": (c.draft_vocab_size,), "enc_norm": (nt,), "tap_norm": (nt,),
        "q_norm": (c.head_dim,), "k_norm": (c.head_dim,), "q_bias": (q,), "k_bias": (kv,), "v_bias": (kv,),
        "o_bias": (hd,), "gate_bias": (ff,), "up_bias": (ff,), "down_bias": (hd,),
    }


_FINITE_CHUNK_ROWS = 4096


def check_attention_config(c: Any, may_be_zero: tuple[str, ...] = ()) -> None:
    """The checks every head's config (a dataclass) needs: numbers positive (but rms_norm_eps and
    may_be_zero), rms_norm_eps in (0, 1), an even head_dim (RoPE), query heads a multiple of KV heads."""
    for f in fields(c):
        v = getattr(c, f.name)
        if f.name in ("rms_norm_eps", *may_be_zero) or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if v <= 0:
            raise ConversionError(f"config key {f.name} must be positive, got {v}")
    if not 0 < c.rms_norm_eps < 1:
        raise ConversionError(f"config key rms_norm_eps must be in (0, 1), got {c.rms_norm_eps}")
    if c.head_dim % 2:
        raise ConversionError(f"config key head_dim must be even for RoPE, got {c.head_dim}")
    if c.num_attention_heads % c.num_key_value_heads:
        raise ConversionError(f"num_attention_heads ({c.num_attention_heads}) is not a multiple of "
                              f"num_key_value_heads ({c.num_key_value_heads})")


def _all_finite(t: Any) -> bool:
    """np.isfinite over a tensor a block of rows at a time (a LazyTensor is never read whole)."""
    return all(bool(np.isfinite(t[a : a + _FINITE_CHUNK_ROWS]).all()) for a in range(0, t.shape[0], _FINITE_CHUNK_ROWS))


@dataclass
class Eagle3Head:
    config: Eagle3Config
    fc: np.ndarray                      # [Hd, 3*Ht]
    input_layernorm: np.ndarray         # [Hd]     norm of the token embedding
    hidden_norm: np.ndarray             # [Hd]     norm of the fused feature / previous state
    q_proj: np.ndarray                  # [nh*hd, 2*Hd]
    k_proj: np.ndarray                  # [nkv*hd, 2*Hd]
    v_proj: np.ndarray                  # [nkv*hd, 2*Hd]
    o_proj: np.ndarray                  # [Hd, nh*hd]
    post_attention_layernorm: np.ndarray  # [Hd]
    gate_proj: np.ndarray               # [ff, Hd]
    up_proj: np.ndarray                 # [ff, Hd]
    down_proj: np.ndarray               # [Hd, ff]
    norm: np.ndarray                    # [Hd]
    lm_head: Optional[np.ndarray] = None       # [Vd, Hd]; None: the target's output matrix
    embed_tokens: Optional[np.ndarray] = None  # [V, Hd]; None: the target's token embedding
    d2t: Optional[np.ndarray] = None           # [Vd] int64 ABSOLUTE target ids
    enc_norm: Optional[np.ndarray] = None      # [n*Ht], only with norm_before_fc
    tap_norm: Optional[np.ndarray] = None      # [n*Ht] the n per-tap norms end to end, only with fc_norm
    q_norm: Optional[np.ndarray] = None        # [head_dim] per-head RMSNorm of q before RoPE (Qwen3)
    k_norm: Optional[np.ndarray] = None        # [head_dim]
    q_bias: Optional[np.ndarray] = None        # biases: [nh*hd], [nkv*hd], [nkv*hd], [Hd], [ff], [ff], [Hd]
    k_bias: Optional[np.ndarray] = None
    v_bias: Optional[np.ndarray] = None
    o_bias: Optional[np.ndarray] = None
    gate_bias: Optional[np.ndarray] = None
    up_bias: Optional[np.ndarray] = None
    down_bias: Optional[np.ndarray] = None
    extra: dict = field(default_factory=dict)  # provenance notes (layout, convention)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return expected_shapes(self.config)

    def validate(self) -> None:
        """Raises ConversionError naming the first inconsistent tensor or key."""
        c = self.config
        check_attention_config(c)
        if not MIN_TAPS <= c.n_taps <= MAX_TAPS or any(int(i) < 1 for i in c.target_layers):
            raise ConversionError(f"target_layers must be {MIN_TAPS} to {MAX_TAPS} layer ids >= 1, "
                                  f"got {list(c.target_layers)}")
        for name, shape in self.expected_shapes().items():
            t = getattr(self, name)
            if t is None:
                continue
            if tuple(t.shape) != shape:
                raise ConversionError(f"tensor {name} has shape {tuple(t.shape)}, expected {shape} from the config")
            if name == "d2t":
                continue  # integers: checked below
            if t.dtype.kind != "f":
                raise ConversionError(f"tensor {name} holds {t.dtype} values: weights must be floating point "
                                      f"(the checkpoint is damaged or not an EAGLE-3 head)")
            if not _all_finite(t):
                raise ConversionError(f"tensor {name} contains NaN or infinite values")
        if c.norm_before_fc and self.enc_norm is None:
            raise ConversionError("norm_before_fc is set but the head has no input_norm (enc_norm) tensor")
        if c.fc_norm and self.tap_norm is None:
            raise ConversionError("fc_norm is set but the head has no fc_norm.<i>.weight (tap_norm) tensors")
        if (self.q_norm is None) != (self.k_norm is None):
            raise ConversionError("the head has only one of q_norm and k_norm")
        if self.d2t is not None:
            d = self.d2t
            if d.dtype.kind not in "iu":
                raise ConversionError(f"tensor d2t must hold integers, got {d.dtype}")
            if d.min() < 0 or d.max() >= c.vocab_size:
                raise ConversionError(f"tensor d2t maps to target ids {int(d.min())}..{int(d.max())}, outside the "
                                      f"target vocabulary of {c.vocab_size}")
            if len(np.unique(d)) != len(d):
                raise ConversionError("tensor d2t maps two draft ids to the same target id")
        elif c.draft_vocab_size != c.vocab_size:
            raise ConversionError(f"draft_vocab_size {c.draft_vocab_size} differs from vocab_size {c.vocab_size} "
                                  f"but the head has no d2t mapping")
        if self.lm_head is None and c.draft_vocab_size != c.vocab_size:
            raise ConversionError("the head has no lm_head and a reduced draft vocabulary: it cannot share the "
                                  "target's output matrix")


def is_variant(head: Eagle3Head) -> bool:
    """True for a head llama.cpp's eagle3 graph cannot run (this runtime's graph runs it, arch eagle3x):
    other than three taps, norm_output, fc_norm, q/k norms or biases."""
    c = head.config
    return c.n_taps != 3 or c.norm_output or c.fc_norm or any(getattr(head, f) is not None for f in VARIANT_TENSORS)


def check_against_target(config: Eagle3Config, target: "TargetInfo", has_embed_tokens: bool) -> None:
    """Raises ConversionError when the head cannot read this target's states or vocabulary."""
    where = f"target {target.source}"
    if config.target_hidden_size != target.n_embd:
        raise ConversionError(f"head expects target hidden size {config.target_hidden_size} (fc input "
                              f"{config.n_taps * config.target_hidden_size}) but {where} has hidden size {target.n_embd}: "
                              f"this head was trained for another model")
    if config.vocab_size != target.n_vocab:
        raise ConversionError(f"head vocab_size {config.vocab_size} differs from the {target.n_vocab} tokens of {where}")
    if target.n_layer in config.target_layers:
        raise ConversionError(f"target_layers {list(config.target_layers)}: id {target.n_layer} taps the output of the "
                              f"last layer of {where}, which llama.cpp reduces to the rows that return logits, so "
                              f"this runtime cannot capture it at every position (it needs ids 1..{target.n_layer - 1})")
    bad = [i for i in config.target_layers if not 1 <= i <= target.n_layer - 1]
    if bad:
        raise ConversionError(f"target_layers {list(config.target_layers)}: id(s) {bad} are outside 1..{target.n_layer - 1} "
                              f"for {where} with {target.n_layer} layers")
    if not has_embed_tokens and config.hidden_size != target.n_embd:
        raise ConversionError(f"head has no embed_tokens and hidden size {config.hidden_size}, so it must share the "
                              f"target's token embedding, but {where} has hidden size {target.n_embd}")
