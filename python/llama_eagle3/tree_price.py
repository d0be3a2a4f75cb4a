"""Whether a round drafts a tree instead of a chain ("where a tree is priced"; policy.py asks).

A tree (tree_width > 1, tree.py) of `nodes` nodes and depth k_max commits E_tree = gain * E(k_max)
tokens per round and costs T(nodes + 1) + its drafting time + o(nodes + 1), with gain (tree tokens
per round over the chain's E(k_max) at the time) and the drafting time measured on tree rounds.
`warmup_rounds` tree rounds measure them, unless even a tree that committed k_max + 1 tokens
every round would lose to the best chain (bound()); from then on a round drafts the tree when
its rate beats the best chain's. On a compute-bound CPU T(n) grows with n and the tree loses; on
a bandwidth-bound GPU T(n) ~ T(1) and the tree's extra acceptance is nearly free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from .costs import Ema

if TYPE_CHECKING:
    from .policy import DraftPolicy


@dataclass
class TreePrice:
    width: int = 1               # > 1: trees of this width are a candidate shape
    nodes: int = 0               # node budget of a tree
    warmup_rounds: int = 4       # tree rounds that measure its gain before the cost model decides
    rounds: int = 0              # tree rounds measured
    _gain: Ema = field(default_factory=lambda: Ema(0.85))
    _c: Ema = field(default_factory=lambda: Ema(0.9))   # drafting seconds per tree

    def observe(self, committed: int, chain_tokens: float, draft_seconds: float) -> None:
        """A tree round committed `committed` tokens where a chain of k_max would commit
        chain_tokens (E(k_max)); drafting took draft_seconds."""
        self.rounds += 1
        self._gain.add(committed / chain_tokens)
        self._c.add(draft_seconds)

    def rate(self, policy: "DraftPolicy") -> Optional[float]:
        """E_tree / C_tree in tokens per second, or None before tree rounds were measured."""
        t = policy.cost(self.nodes + 1)
        if self._gain.value is None or t is None:
            return None
        e = self._gain.value * policy.expected_tokens(policy.k_max)
        costs = policy.costs
        return e / (t + self._c.value + costs.overhead(self.nodes + 1) + e * costs.consumer)

    def bound(self, policy: "DraftPolicy") -> Optional[float]:
        """The most a tree could commit per second: k_max + 1 tokens every round, drafted no
        slower than a chain of k_max. Trees are not even tried where this loses to a chain."""
        t = policy.cost(self.nodes + 1)
        if t is None or policy.costs.step is None:
            return None
        return (policy.k_max + 1) / (t + policy.costs.draft_cost(policy.k_max))

    def beats(self, policy: "DraftPolicy", best_chain: float) -> bool:
        """Whether this round drafts the tree rather than the best chain (rate best_chain)."""
        if self.rounds < self.warmup_rounds:
            return (self.bound(policy) or 0.0) > best_chain
        return (self.rate(policy) or 0.0) > best_chain

    def snapshot(self) -> dict:
        return {"tree_gain": None if self._gain.value is None else round(self._gain.value, 3),
                "tree_draft_ms": None if self._c.value is None else round(1e3 * self._c.value, 3)}
