"""The converted head run by llama.cpp's eagle3 graph against the NumPy reference (shared by
test_reference and test_quirks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eagle3_convert.gguf_io import read_head_gguf
from eagle3_convert.reference import KVCache, decode, encode
from eagle3_convert.target import gguf_tensor, open_gguf


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def check_llama_cpp_matches_reference(path: Path, target: Path, n_vocab: int, n: int = 24) -> np.ndarray:
    """llama.cpp's eagle3 graph on the converted head == the NumPy reference (positions 0..n-1 and a
    chain step); returns llama.cpp's logits of the n positions."""
    from llama_eagle3 import Llama

    head = read_head_gguf(path)
    reader = open_gguf(target)
    tok_embd = head.embed_tokens if head.embed_tokens is not None else gguf_tensor(reader, "token_embd.weight")
    lm_head = None if head.lm_head is not None else gguf_tensor(reader, "output.weight")
    llm = Llama(str(target), n_ctx=256, verbose=False, eagle3_head=str(path), eagle3_draft_max=0)
    try:
        runner = llm._engine.drafter.runner
        rng = np.random.default_rng(0)
        f = rng.standard_normal((n, 3 * head.config.target_hidden_size)).astype(np.float32)
        tokens = rng.integers(0, n_vocab, n).astype(np.int32)
        g = runner.encode(f)
        assert rel(g, encode(head, head.config, f)) <= 1e-3
        logits, h = runner.forward(tokens, g, 0)
        cache = KVCache()
        ref_logits, ref_h = decode(head, head.config, tok_embd[tokens], g, np.arange(n), lm_head=lm_head, cache=cache)
        tol = 1e-3 if head.lm_head is not None else 1e-2  # a shared lm_head is the target's Q8_0 matrix
        assert rel(h, ref_h) <= 1e-3
        assert rel(logits, ref_logits) <= tol
        t2 = np.array([int(np.argmax(ref_logits[-1]))], dtype=np.int32)
        t2 = t2 if head.d2t is None else head.d2t[t2].astype(np.int32)
        logits2, h2 = runner.forward(t2, h[-1:], n)
        ref_logits2, ref_h2 = decode(head, head.config, tok_embd[t2], h[-1:], np.array([n]), lm_head=lm_head, cache=cache)
        assert rel(h2, ref_h2) <= 1e-3
        assert rel(logits2, ref_logits2) <= tol
        return logits
    finally:
        llm.close()
