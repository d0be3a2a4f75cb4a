"""The draft vocabulary: the target tokens the head may propose."""

from __future__ import annotations

import numpy as np


def build_draft_vocab(token_counts: np.ndarray, size: int, always: tuple[int, ...] = ()) -> np.ndarray:
    """The `size` most frequent target ids (plus `always`, e.g. end-of-turn), sorted: d2t as
    absolute target ids. token_counts[i] = occurrences of target id i in the responses."""
    size = min(size, len(token_counts))
    order = np.argsort(-token_counts, kind="stable")
    chosen = list(dict.fromkeys([*always, *order.tolist()]))[:size]
    return np.sort(np.asarray(chosen, dtype=np.int64))


def coverage(token_counts: np.ndarray, d2t: np.ndarray) -> float:
    """Fraction of response tokens the draft vocabulary can produce."""
    total = token_counts.sum()
    return float(token_counts[d2t].sum() / total) if total else 0.0
