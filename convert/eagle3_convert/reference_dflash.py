"""The DFlash drafter's math in NumPy (float64): the one source of truth for DFlash heads.

What llama.cpp's `dflash` graph computes (vendor/llama.cpp/src/models/dflash.cpp), in two
steps that share the draft's KV cache:

  context (an embedding batch): each context row is the concatenation of the target's tap
    states (the INPUT of each llama.cpp target layer in config.target_layers, in that order)
    at ONE target position p; it is fused to g = hidden_norm(fc @ row) and, per draft layer,
    stored as K = rope(k_norm(k_proj g), p), V = v_proj g at position p. No attention runs.
  block (a token batch): rows [last token, MASK x n-1] at positions p0..p0+n-1, where p0 is
    the position of the last (accepted, not yet target-processed) token, so the context
    holds positions < p0. Per layer: x = input_layernorm(h); q, k, v from x (q/k per-head RMS
    norms, then RoPE NeoX / HF rotate-half); every block row attends to ALL context rows and
    ALL block rows (non-causal); h += o_proj(attn); h += MLP(post_attention_layernorm(h)).
    logits = lm_head(norm(h)) for every block row; row i > 0 predicts the token at p0 + i.

`weights` objects carry the DFlashHead field names (a DFlashHead, or a GGUF read-back);
their tensors may be LazyTensor or arrays: each is read once per use as float64.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .dflash_head import DFlashConfig
from .reference import rms_norm, rope


def _w(t: Any) -> np.ndarray:
    return np.asarray(t, dtype=np.float64)


def fuse_context(w: Any, c: DFlashConfig, features: np.ndarray) -> np.ndarray:
    """features [m, n_taps*H] (taps in target_layers order) -> fused context rows g [m, H]."""
    return rms_norm(_w(features) @ _w(w.fc).T, _w(w.hidden_norm), c.rms_norm_eps)


def _heads(x: np.ndarray, n_heads: int, c: DFlashConfig) -> np.ndarray:
    return x.reshape(x.shape[0], n_heads, c.head_dim)


def layer_kv(layer: Any, c: DFlashConfig, x: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows x [m, H] at positions pos -> K (normed, rotated) and V, each [m, nkv, hd]."""
    k = rms_norm(_heads(x @ _w(layer.k_proj).T, c.num_key_value_heads, c), _w(layer.k_norm), c.rms_norm_eps)
    v = _heads(x @ _w(layer.v_proj).T, c.num_key_value_heads, c)
    return rope(k, pos, c), v


def _attend(c: DFlashConfig, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Non-causal grouped-query attention: q [n, nh, hd] over k, v [m, nkv, hd] -> [n, nh*hd]."""
    group = c.num_attention_heads // c.num_key_value_heads
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = np.einsum("ihd,jhd->hij", q, k) / np.sqrt(c.head_dim)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hij,jhd->ihd", p, v).reshape(q.shape[0], -1)


def decoder_layer(layer: Any, c: DFlashConfig, h: np.ndarray, block_pos: np.ndarray,
                  ctx_k: np.ndarray, ctx_v: np.ndarray) -> np.ndarray:
    """One draft layer on the block rows h [n, H], attending the layer's context K/V and the block."""
    x = rms_norm(h, _w(layer.input_layernorm), c.rms_norm_eps)
    q = rope(rms_norm(_heads(x @ _w(layer.q_proj).T, c.num_attention_heads, c), _w(layer.q_norm), c.rms_norm_eps),
             block_pos, c)
    k, v = layer_kv(layer, c, x, block_pos)
    attn = _attend(c, q, np.concatenate([ctx_k, k]), np.concatenate([ctx_v, v]))
    h = h + attn @ _w(layer.o_proj).T
    m = rms_norm(h, _w(layer.post_attention_layernorm), c.rms_norm_eps)
    gate, up = m @ _w(layer.gate_proj).T, m @ _w(layer.up_proj).T
    return h + (gate / (1 + np.exp(-gate)) * up) @ _w(layer.down_proj).T


def block_states(w: Any, c: DFlashConfig, features: np.ndarray, ctx_pos: np.ndarray, block_embd: np.ndarray,
                 p0: int) -> np.ndarray:
    """The final-normed states [n, H] of a block (llama.cpp's t_embd, "result_norm").

    features [m, n_taps*H]: context row j holds the target's taps at position ctx_pos[j];
    block_embd [n, H]: token-embedding rows of [last token, MASK x n-1], at positions p0..p0+n-1."""
    g = fuse_context(w, c, features)
    ctx_pos, block_pos = np.asarray(ctx_pos), p0 + np.arange(block_embd.shape[0])
    h = _w(block_embd)
    for layer in w.layers:
        ctx_k, ctx_v = layer_kv(layer, c, g, ctx_pos)
        h = decoder_layer(layer, c, h, block_pos, ctx_k, ctx_v)
    return rms_norm(h, _w(w.norm), c.rms_norm_eps)


def draft_block(w: Any, c: DFlashConfig, features: np.ndarray, ctx_pos: np.ndarray, block_embd: np.ndarray,
                p0: int, lm_head: Optional[Any] = None) -> np.ndarray:
    """Logits [n, Vd] of a block (block_states' arguments); lm_head: the output matrix (or some of
    its rows), default the head's own. Row i > 0 scores the token at position p0 + i."""
    head = w.lm_head if lm_head is None else lm_head
    return block_states(w, c, features, ctx_pos, block_embd, p0) @ _w(head).T
