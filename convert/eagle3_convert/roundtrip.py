"""The read-back checks every converter runs after writing: one definition for EAGLE-3 and DFlash
(their heads and GGUF readers both expose d2t, lm_head, embed_tokens and rows(name, ids))."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConversionError

CHUNK_ROWS = 4096  # rows compared at a time by the whole-tensor check
LIMITS = {"f32": 1e-5, "f16": 1e-2, "bf16": 5e-2, "q8_0": 5e-2}  # largest relative difference per outtype


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """|a - b| / |a| (Frobenius), with |a| floored at 1e-30."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


def vocabulary_roundtrip(original: Any, written: Any) -> float:
    """Worst relative difference, per chunk of CHUNK_ROWS rows, of lm_head and embed_tokens (the
    reference check samples the first and never reads the second); d2t must be identical."""
    d = written.d2t
    if (original.d2t is None) != (d is None) or (d is not None and not np.array_equal(original.d2t, d)):
        raise ConversionError(f"{written.path}: d2t was not written as the checkpoint's absolute ids")
    worst = 0.0
    for name in ("lm_head", "embed_tokens"):
        a = getattr(original, name)
        for start in range(0, 0 if a is None else a.shape[0], CHUNK_ROWS):
            rows = np.arange(start, min(start + CHUNK_ROWS, a.shape[0]))
            worst = max(worst, relative_difference(np.asarray(a[rows[0]: rows[-1] + 1]), written.rows(name, rows)))
    return worst
