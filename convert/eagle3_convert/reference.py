"""The EAGLE-3 head's math in NumPy: the one source of truth.

The converter's reference check, the tests (against llama.cpp) and training all use
these functions. Shapes: n rows (positions), Ht target width, Hd head width,
Vd draft vocabulary. Computation is float64; inputs may be any float dtype.

Pairing: row i consumes (token t[P+1], state g[P]) at RoPE position P (see
csrc/head_runner.h). For the first draft step g is the encoded target feature
encode(f[P]); for later steps it is the head's own pre-norm output h of the
previous step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .head import Eagle3Config, Eagle3Head


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_factors(c: Eagle3Config) -> Optional[np.ndarray]:
    """Per-frequency divisors for HF "llama3" RoPE scaling ([head_dim/2]), else None."""
    s = c.rope_scaling
    if not s:
        return None
    factor = float(s.get("factor", 8.0))
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s.get("original_max_position_embeddings", 8192))
    inv = 1.0 / c.rope_theta ** (np.arange(0, c.head_dim, 2, dtype=np.float64) / c.head_dim)
    wavelen = 2 * np.pi / inv
    smooth = (old_ctx / wavelen - low) / (high - low)
    out = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old_ctx / high, 1.0, out)
    out = np.where(wavelen > old_ctx / low, factor, out)
    return out


def rope(x: np.ndarray, pos: np.ndarray, c: Eagle3Config) -> np.ndarray:
    """HF rotate-half RoPE. x: [n, heads, head_dim], pos: [n]."""
    inv = 1.0 / c.rope_theta ** (np.arange(0, c.head_dim, 2, dtype=np.float64) / c.head_dim)
    f = rope_factors(c)
    if f is not None:
        inv = inv / f
    ang = pos.astype(np.float64)[:, None] * inv[None, :]              # [n, hd/2]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    half = c.head_dim // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def encode(head: Eagle3Head, features: np.ndarray) -> np.ndarray:
    """f [n, 3*Ht] (low|mid|high) -> g [n, Hd]."""
    x = features.astype(np.float64)
    if head.config.norm_before_fc:
        x = rms_norm(x, head.enc_norm, head.config.rms_norm_eps)
    return x @ head.fc.astype(np.float64).T


@dataclass
class KVCache:
    """Keys (after RoPE) and values of earlier rows: [positions, n_kv_heads, head_dim]."""
    k: list = field(default_factory=list)
    v: list = field(default_factory=list)


def decode(head: Eagle3Head, token_embd: np.ndarray, g: np.ndarray, pos: np.ndarray,
           lm_head: Optional[np.ndarray] = None, cache: Optional[KVCache] = None) -> tuple[np.ndarray, np.ndarray]:
    """One decoder pass over n rows, causal among them and over `cache` (extended in place).

    token_embd [n, Hd] rows of the token embedding, g [n, Hd], pos [n].
    Returns (logits [n, Vd], prenorm h [n, Hd]). lm_head defaults to the head's own.
    """
    c, eps = head.config, head.config.rms_norm_eps
    n = token_embd.shape[0]
    g = g.astype(np.float64)
    e_norm = rms_norm(token_embd, head.input_layernorm, eps)
    g_norm = rms_norm(g, head.hidden_norm, eps)
    residual = g_norm if c.norm_before_residual else g
    x = np.concatenate([e_norm, g_norm], axis=-1)                        # [n, 2*Hd]

    nh, nkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    q = rope((x @ head.q_proj.T).reshape(n, nh, hd), pos, c)
    k = rope((x @ head.k_proj.T).reshape(n, nkv, hd), pos, c)
    v = (x @ head.v_proj.T).reshape(n, nkv, hd)
    cache = cache if cache is not None else KVCache()
    n_past = len(cache.k)
    cache.k.extend(k)
    cache.v.extend(v)
    K, V = np.stack(cache.k), np.stack(cache.v)                         # [n_past+n, nkv, hd]
    rep = nh // nkv
    K, V = np.repeat(K, rep, axis=1), np.repeat(V, rep, axis=1)          # [m, nh, hd]
    scores = np.einsum("ihd,jhd->hij", q, K) / np.sqrt(hd)               # [nh, n, m]
    mask = np.arange(n_past + n)[None, :] > (n_past + np.arange(n))[:, None]
    scores = np.where(mask[None], -np.inf, scores)
    scores -= scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    attn = np.einsum("hij,jhd->ihd", p, V).reshape(n, nh * hd)

    h = attn @ head.o_proj.T + residual
    m = rms_norm(h, head.post_attention_layernorm, eps)
    gate, up = m @ head.gate_proj.T, m @ head.up_proj.T
    h = (gate / (1 + np.exp(-gate)) * up) @ head.down_proj.T + h        # pre-norm state
    w = head.lm_head if lm_head is None else lm_head
    logits = rms_norm(h, head.norm, eps) @ w.astype(np.float64).T
    return logits, h
