"""The EAGLE-3 head's math: the one source of truth.

The converter's reference check and the tests run it in NumPy (float64) against
llama.cpp; the trainer runs the same functions on torch tensors (autograd). Shapes:
n rows (positions), Ht target width, Hd head width, Vd draft vocabulary.

Pairing: row i consumes (token t[P+1], state g[P]) at RoPE position P (see
csrc/head_runner.h). For the first draft step g is the encoded target feature
encode(f[P]); for later steps it is the head's own output state of the previous step:
the pre-norm h, or norm(h) with norm_output (speculators' "Eagle 3.1"; logits are
lm_head(norm(h)) either way).

Variants this runtime's own graph runs (llama.cpp's eagle3 graph runs none of them):
n taps (3..5), fc_norm (one RMSNorm per tap before fc), norm_output, q/k norms (per
head, before RoPE), attention and MLP biases. A weights object without the variant
attributes (the trainer's module) is the plain head.

Every function takes a `weights` object with the Eagle3Head field names (an
Eagle3Head of NumPy arrays, or the trainer's module of torch parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .head import Eagle3Config


# ---- the few array operations that differ between NumPy and torch ---------------------

def _is_np(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def _lib(x: Any) -> Any:
    if _is_np(x):
        return np
    import torch

    return torch


def _mean_last(x: Any) -> Any:
    return x.mean(-1, keepdims=True) if _is_np(x) else x.mean(-1, keepdim=True)


def _cat(xs: list, axis: int) -> Any:
    return np.concatenate(xs, axis=axis) if _is_np(xs[0]) else _lib(xs[0]).cat(xs, dim=axis)


def _repeat(x: Any, n: int, axis: int) -> Any:
    return np.repeat(x, n, axis=axis) if _is_np(x) else x.repeat_interleave(n, dim=axis)


def _f(x: Any) -> Any:
    """NumPy runs in float64; torch keeps the trainer's dtype."""
    return x.astype(np.float64) if _is_np(x) else x


# ---- building blocks -----------------------------------------------------------------------

def rms_norm(x: Any, w: Any, eps: float) -> Any:
    x = _f(x)
    return x / _lib(x).sqrt(_mean_last(x * x) + eps) * w


def _base_inv_freq(c: Eagle3Config) -> np.ndarray:
    return 1.0 / c.rope_theta ** (np.arange(0, c.head_dim, 2, dtype=np.float64) / c.head_dim)


def rope_factors(c: Eagle3Config) -> Optional[np.ndarray]:
    """Per-frequency divisors ([head_dim/2]; llama.cpp's rope_freqs tensor) for "llama3" scaling
    (computed) and "freqs" (stored), else None."""
    s = c.rope_scaling or {}
    if s.get("rope_type") == "freqs":
        return np.asarray(s["factors"], dtype=np.float64)
    if s.get("rope_type") != "llama3":
        return None
    factor = float(s["factor"])
    low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_ctx = float(s["original_max_position_embeddings"])
    wavelen = 2 * np.pi / _base_inv_freq(c)
    smooth = (old_ctx / wavelen - low) / (high - low)
    out = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old_ctx / high, 1.0, out)
    out = np.where(wavelen > old_ctx / low, factor, out)
    return out


def _yarn_inv_freq(c: Eagle3Config, s: dict) -> np.ndarray:
    """HF YaRN (beta_fast 32, beta_slow 1, truncated correction range): extrapolated high
    frequencies, interpolated (divided by factor) low ones, a linear ramp between."""
    dim, base = c.head_dim, c.rope_theta
    orig = float(s["original_max_position_embeddings"])

    def correction_dim(rotations: float) -> float:
        return dim * np.log(orig / (rotations * 2 * np.pi)) / (2 * np.log(base))

    low = max(np.floor(correction_dim(32.0)), 0.0)
    high = min(np.ceil(correction_dim(1.0)), dim - 1.0)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / max(high - low, 0.001), 0.0, 1.0)
    extrapolate = 1.0 - ramp
    inv = _base_inv_freq(c)
    return inv / float(s["factor"]) * (1 - extrapolate) + inv * extrapolate


def rope_inv_freq(c: Eagle3Config) -> np.ndarray:
    """Angular speed per frequency ([head_dim/2]) after the config's RoPE scaling."""
    s = c.rope_scaling or {}
    if s.get("rope_type") == "linear":
        return _base_inv_freq(c) / float(s["factor"])
    if s.get("rope_type") == "yarn":
        return _yarn_inv_freq(c, s)
    f = rope_factors(c)
    return _base_inv_freq(c) if f is None else _base_inv_freq(c) / f


def rope_attention_factor(c: Eagle3Config) -> float:
    """YaRN's factor on cos and sin (1 for every other scaling)."""
    s = c.rope_scaling or {}
    return float(s["attention_factor"]) if s.get("rope_type") == "yarn" else 1.0


def rope(x: Any, pos: np.ndarray, c: Eagle3Config) -> Any:
    """HF rotate-half RoPE. x: [..., n, heads, head_dim], pos: [n] (NumPy ints)."""
    ang = np.asarray(pos, dtype=np.float64)[:, None] * rope_inv_freq(c)[None, :]      # [n, hd/2]
    m = rope_attention_factor(c)
    cos, sin = m * np.cos(ang)[:, None, :], m * np.sin(ang)[:, None, :]
    if not _is_np(x):
        cos, sin = (_lib(x).as_tensor(a, dtype=x.dtype, device=x.device) for a in (cos, sin))
    half = c.head_dim // 2
    x1, x2 = x[..., :half], x[..., half:]
    return _cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _opt(w: Any, name: str) -> Any:
    """A variant tensor of the head, or None (absent, or a weights object without it)."""
    return getattr(w, name, None)


def _add_bias(x: Any, w: Any, name: str) -> Any:
    b = _opt(w, name)
    return x if b is None else x + _f(b)


def encode(w: Any, c: Eagle3Config, features: Any) -> Any:
    """f [..., n*Ht] (the taps in target_layers order) -> g [..., Hd]."""
    x = _f(features)
    if c.norm_before_fc:
        x = rms_norm(x, w.enc_norm, c.rms_norm_eps)
    if getattr(c, "fc_norm", False):
        ht, tn = c.target_hidden_size, _f(w.tap_norm)
        x = _cat([rms_norm(x[..., i * ht:(i + 1) * ht], tn[i * ht:(i + 1) * ht], c.rms_norm_eps)
                  for i in range(c.n_taps)], axis=-1)
    return x @ _f(w.fc).T


def layer_input(w: Any, c: Eagle3Config, token_embd: Any, g: Any) -> tuple[Any, Any]:
    """(attention input [..., 2*Hd], residual [..., Hd]) for token embeddings and states g."""
    g = _f(g)
    e_norm = rms_norm(token_embd, w.input_layernorm, c.rms_norm_eps)
    g_norm = rms_norm(g, w.hidden_norm, c.rms_norm_eps)
    return _cat([e_norm, g_norm], axis=-1), (g_norm if c.norm_before_residual else g)


def qkv(w: Any, c: Eagle3Config, x: Any, pos: np.ndarray) -> tuple[Any, Any, Any]:
    """x [..., n, 2*Hd] -> q [..., n, nh, hd], k, v [..., n, nkv, hd] (q, k rotated to pos)."""
    shape = tuple(x.shape[:-1])
    q = _add_bias(x @ w.q_proj.T, w, "q_bias").reshape(shape + (c.num_attention_heads, c.head_dim))
    k = _add_bias(x @ w.k_proj.T, w, "k_bias").reshape(shape + (c.num_key_value_heads, c.head_dim))
    v = _add_bias(x @ w.v_proj.T, w, "v_bias").reshape(shape + (c.num_key_value_heads, c.head_dim))
    if _opt(w, "q_norm") is not None:
        q, k = rms_norm(q, w.q_norm, c.rms_norm_eps), rms_norm(k, w.k_norm, c.rms_norm_eps)
    return rope(q, pos, c), rope(k, pos, c), v


def expand_kv(c: Eagle3Config, kv: Any) -> Any:
    """[..., m, nkv, hd] -> [..., m, nh, hd] (grouped-query attention)."""
    return _repeat(kv, c.num_attention_heads // c.num_key_value_heads, axis=-2)


def block_out(w: Any, c: Eagle3Config, attn: Any, residual: Any) -> Any:
    """attention output [..., n, nh*hd] + residual -> pre-norm state h [..., n, Hd]."""
    h = _add_bias(attn @ w.o_proj.T, w, "o_bias") + residual
    m = rms_norm(h, w.post_attention_layernorm, c.rms_norm_eps)
    gate, up = _add_bias(m @ w.gate_proj.T, w, "gate_bias"), _add_bias(m @ w.up_proj.T, w, "up_bias")
    return _add_bias((gate / (1 + _lib(gate).exp(-gate)) * up) @ w.down_proj.T, w, "down_bias") + h


def logits(w: Any, c: Eagle3Config, h: Any, lm_head: Optional[Any] = None) -> Any:
    """pre-norm state h [..., Hd] -> draft-vocabulary logits [..., Vd] (lm_head: the head's own by default)."""
    head = w.lm_head if lm_head is None else lm_head
    return rms_norm(h, w.norm, c.rms_norm_eps) @ _f(head).T


def next_state(w: Any, c: Eagle3Config, h: Any) -> Any:
    """The state the next draft step reads: h, or norm(h) with norm_output."""
    return rms_norm(h, w.norm, c.rms_norm_eps) if getattr(c, "norm_output", False) else h


# ---- inference: one decoder pass with a KV cache ------------------------------------------

@dataclass
class KVCache:
    """Keys (after RoPE) and values of earlier rows: lists of [n_kv_heads, head_dim]."""
    k: list = field(default_factory=list)
    v: list = field(default_factory=list)


def decode(w: Any, c: Eagle3Config, token_embd: np.ndarray, g: np.ndarray, pos: np.ndarray,
           lm_head: Optional[np.ndarray] = None, cache: Optional[KVCache] = None) -> tuple[np.ndarray, np.ndarray]:
    """n rows, causal among them and over `cache` (extended in place); NumPy.

    token_embd [n, Hd] rows of the token embedding, g [n, Hd], pos [n].
    Returns (logits [n, Vd], the state the next step reads [n, Hd]: next_state(h)).
    lm_head defaults to the head's own."""
    n = token_embd.shape[0]
    x, residual = layer_input(w, c, token_embd, g)
    q, k, v = qkv(w, c, x, pos)
    cache = cache if cache is not None else KVCache()
    n_past = len(cache.k)
    cache.k.extend(k)
    cache.v.extend(v)
    K, V = expand_kv(c, np.stack(cache.k)), expand_kv(c, np.stack(cache.v))   # [m, nh, hd]
    scores = np.einsum("ihd,jhd->hij", q, K) / np.sqrt(c.head_dim)          # [nh, n, m]
    mask = np.arange(n_past + n)[None, :] > (n_past + np.arange(n))[:, None]
    scores = np.where(mask[None], -np.inf, scores)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    attn = np.einsum("hij,jhd->ihd", p, V).reshape(n, -1)
    h = block_out(w, c, attn, residual)
    return logits(w, c, h, lm_head), next_state(w, c, h)
