"""The head in torch: trainable weights under Eagle3Head's field names, so the functions of
eagle3_convert.reference run on them unchanged, plus training-time test (TTT) unrolling."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from eagle3_convert.head import Eagle3Config, Eagle3Head, expected_shapes
from eagle3_convert.reference import block_out, encode, expand_kv, layer_input, qkv

_MATRICES = ("fc", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_NORMS = ("input_layernorm", "hidden_norm", "post_attention_layernorm", "norm")


class HeadModule(torch.nn.Module):
    def __init__(self, config: Eagle3Config, token_embd: np.ndarray, lm_head_init: np.ndarray, seed: int = 0):
        super().__init__()
        self.config = c = config
        gen = torch.Generator().manual_seed(seed)
        shapes = expected_shapes(c)
        for name in _MATRICES:
            out_f, in_f = shapes[name]
            w = torch.randn(out_f, in_f, generator=gen) / math.sqrt(in_f)
            if name in ("o_proj", "down_proj"):
                w *= 0.5  # residual branches start small
            self.register_parameter(name, torch.nn.Parameter(w))
        for name in _NORMS:
            self.register_parameter(name, torch.nn.Parameter(torch.ones(c.hidden_size)))
        self.enc_norm = torch.nn.Parameter(torch.ones(3 * c.target_hidden_size)) if c.norm_before_fc else None
        self.lm_head = torch.nn.Parameter(torch.as_tensor(lm_head_init, dtype=torch.float32).clone())
        # frozen: the head shares the target's token embedding
        self.register_buffer("embed", torch.as_tensor(token_embd, dtype=torch.float32), persistent=False)

    def ttt(self, feats: torch.Tensor, tokens: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """Pre-norm states h [B, T, Hd] of every unrolled step (reference.logits turns them into
        draft-vocabulary logits): feats [B, T, 3*Ht], tokens [B, T].

        Step k at row P reproduces draft step k after a draft that starts with the pair
        (t[P+1], g[P]): input (t[P+k+1], h_{k-1}[P]) at position P+k, attending to the
        step-0 keys of rows 0..P and to the row's own keys of steps 1..k. It predicts
        t[P+k+2]. Rows past the end see padding tokens; their losses are masked."""
        c = self.config
        B, T = tokens.shape
        pos = np.arange(T)

        def token_rows(shift: int) -> torch.Tensor:
            shifted = torch.zeros_like(tokens)
            if shift < T:
                shifted[:, : T - shift] = tokens[:, shift:]
            return self.embed[shifted]

        g = encode(self, c, feats)                                            # [B, T, Hd]
        x, residual = layer_input(self, c, token_rows(1), g)
        q, k0, v0 = qkv(self, c, x, pos)
        K0, V0 = expand_kv(c, k0).transpose(1, 2), expand_kv(c, v0).transpose(1, 2)  # [B, nh, T, hd]
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        scale = 1.0 / math.sqrt(c.head_dim)
        diag_k: list[torch.Tensor] = []
        diag_v: list[torch.Tensor] = []
        outs: list[torch.Tensor] = []
        h = g  # step k > 0 feeds the previous step's output
        for k in range(steps):
            if k > 0:
                x, residual = layer_input(self, c, token_rows(k + 1), h)
                q, kk, vv = qkv(self, c, x, pos + k)
                diag_k.append(expand_kv(c, kk).transpose(1, 2))               # [B, nh, T, hd]
                diag_v.append(expand_kv(c, vv).transpose(1, 2))
            qh = q.transpose(1, 2)                                            # [B, nh, T, hd]
            s0 = (qh @ K0.transpose(-1, -2)) * scale                          # [B, nh, T, T]
            s0 = s0.masked_fill(~causal, float("-inf"))
            sd = [(qh * dk).sum(-1, keepdim=True) * scale for dk in diag_k]  # each [B, nh, T, 1]
            p = torch.softmax(torch.cat([s0, *sd], dim=-1), dim=-1)
            attn = p[..., :T] @ V0
            for j, dv in enumerate(diag_v):
                attn = attn + p[..., T + j : T + j + 1] * dv
            h = block_out(self, c, attn.transpose(1, 2).reshape(B, T, -1), residual)
            outs.append(h)
        return outs

    def to_head(self, d2t: Optional[np.ndarray]) -> Eagle3Head:
        """The trained weights as a canonical Eagle3Head (float32 NumPy; embedding shared)."""
        w = {name: getattr(self, name).detach().cpu().numpy().astype(np.float32)
             for name in (*_MATRICES, *_NORMS, "lm_head")}
        enc = None if self.enc_norm is None else self.enc_norm.detach().cpu().numpy().astype(np.float32)
        return Eagle3Head(config=self.config, d2t=d2t, enc_norm=enc, **w)
