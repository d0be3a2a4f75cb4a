"""Training-time test is inference: the trainer's unrolled steps equal the reference draft chain."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from eagle3_convert.head import Eagle3Config  # noqa: E402
from eagle3_convert.reference import KVCache, decode, encode, logits  # noqa: E402
from llama_eagle3.train.model import HeadModule  # noqa: E402

C = Eagle3Config(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                 rms_norm_eps=1e-6, rope_theta=10000.0, target_hidden_size=24, vocab_size=50, draft_vocab_size=20,
                 target_layers=(2, 4, 5), norm_before_fc=True)


@pytest.mark.parametrize("norm_before_residual", [False, True])
def test_ttt_steps_match_the_inference_chain(norm_before_residual):
    c = dataclasses.replace(C, norm_before_residual=norm_before_residual)
    rng = np.random.default_rng(0)
    embed = rng.standard_normal((c.vocab_size, c.hidden_size)).astype(np.float32)
    model = HeadModule(c, embed, rng.standard_normal((c.draft_vocab_size, c.hidden_size)).astype(np.float32), seed=1)
    model = model.double()
    T, steps = 9, 4
    feats = rng.standard_normal((1, T, 3 * c.target_hidden_size))
    tokens = rng.integers(0, c.vocab_size, (1, T))
    with torch.no_grad():
        outs = [logits(model, c, h) for h in model.ttt(torch.from_numpy(feats), torch.from_numpy(tokens), steps)]
    head = model.to_head(None)
    g = encode(head, c, feats[0])
    for P in range(T - steps - 1):
        # inference: the head's KV holds pairs (t[i+1], g[i]) for i < P; the draft starts at row P
        cache = KVCache()
        if P:
            decode(head, c, embed[tokens[0, 1 : P + 1]], g[:P], np.arange(P), cache=cache)
        z, h = decode(head, c, embed[tokens[0, P + 1 : P + 2]], g[P : P + 1], np.array([P]), cache=cache)
        np.testing.assert_allclose(outs[0][0, P].numpy(), z[0], rtol=1e-9, atol=1e-9)
        for k in range(1, steps):
            # step k feeds (t[P+k+1], h of step k-1) at position P+k
            z, h = decode(head, c, embed[tokens[0, P + k + 1 : P + k + 2]], h, np.array([P + k]), cache=cache)
            np.testing.assert_allclose(outs[k][0, P].numpy(), z[0], rtol=1e-9, atol=1e-9)
