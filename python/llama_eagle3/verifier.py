"""Verification of a chain or tree draft against the target ("where tokens are accepted")."""

from __future__ import annotations

from typing import Callable, Sequence

from .tree import DraftTree


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


def accept_tree(sample_row: Callable[[int], int], tree: DraftTree) -> tuple[list[int], list[int]]:
    """Lossless tree verification (design notes, section 4).

    sample_row(r) samples the target's token at batch row r (row 0: the root, row 1 + i: node i,
    which follows the path root -> i) with plain decoding's sampler. From the root, sample; if a
    child carries the sampled token, move to it and sample again; stop at the first sample no
    child carries. Returns the committed tokens (every sample) and the accepted path (nodes).
    Every committed token is a sample of the target given the committed prefix, exactly as in
    accept_chain; with deterministic drafts this is plain sampling's distribution.
    """
    kids = tree.children()
    committed: list[int] = []
    path: list[int] = []
    row = 0
    while True:
        y = sample_row(row)
        committed.append(y)
        nxt = next((c for c in kids[row] if tree.tokens[c] == y), None)
        if nxt is None:
            return committed, path
        path.append(nxt)
        row = nxt + 1
