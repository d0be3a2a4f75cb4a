"""Verification of a chain draft against the target ("where tokens are accepted")."""

from __future__ import annotations

from typing import Callable, Sequence


def accept_chain(sample_row: Callable[[int], int], drafts: Sequence[int]) -> list[int]:
    """Lossless chain verification.

    sample_row(i) samples the target's token at verify row i (row 0 follows the last
    committed token, row i follows drafts[:i]) with the same sampler plain decoding uses.
    Returns the committed tokens: every sample up to and including the first one that
    differs from its draft (or the bonus sample after the last draft). Each committed
    token is a sample from the target's distribution given the committed prefix, so the
    output is distributed exactly as plain decoding (and is identical under greedy).
    """
    out: list[int] = []
    for i in range(len(drafts) + 1):
        y = sample_row(i)
        out.append(y)
        if i == len(drafts) or y != drafts[i]:
            break
    return out
