"""Verification of a chain or tree draft against the target ("where tokens are accepted")."""

from __future__ import annotations

import random
from typing import Callable, Sequence, Union

from .policy import expected_tokens
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


class SimulatedAcceptance:
    """Benchmark only (`llama-eagle3 bench --simulate-acceptance`): real costs, simulated acceptance.

    A round runs as usual (the head drafts, the target decodes the verify batch, the sampler samples
    each row it would sample), but draft position i is accepted with probability alphas[i] (the
    last value repeats for deeper positions) given that positions before it were, instead of by
    comparing it with the target's sample. An accepted position commits the draft token, the first
    rejected one commits that row's sample, so committed text is meaningless while every cost is
    the real one. Probes (the policy's unverified one-token drafts while speculation is off) hit
    with probability alphas[0]. Nothing here is lossless: never use it outside a benchmark."""

    def __init__(self, alphas: Sequence[float], seed: Union[int, str] = 0):
        if not alphas or not all(0.0 <= a <= 1.0 for a in alphas):
            raise ValueError(f"simulated acceptance needs probabilities in [0, 1], got {list(alphas)}")
        self.alphas = list(alphas)
        self._rng = random.Random(seed)

    def alpha(self, i: int) -> float:
        """P(draft position i + 1 accepted | positions 1..i accepted)."""
        return self.alphas[min(i, len(self.alphas) - 1)]

    def expected_tokens(self, k: int) -> float:
        """E(k): tokens a chain of k commits per round at these probabilities (bonus included)."""
        return expected_tokens(self.alpha, k)

    def accept_chain(self, sample_row: Callable[[int], int], drafts: Sequence[int]) -> list[int]:
        """accept_chain's contract and sampling calls, with the acceptances drawn."""
        out: list[int] = []
        for i in range(len(drafts) + 1):
            y = sample_row(i)
            if i == len(drafts) or self._rng.random() >= self.alpha(i):
                out.append(y)
                return out
            out.append(drafts[i])
        return out

    def probe_hit(self) -> bool:
        return self._rng.random() < self.alpha(0)
