"""Acceptance estimates of draft positions, read by the draft policy (policy.py).

alpha_i = P(draft position i accepted | positions before it were). A chain of k drafts then
commits E(k) = 1 + sum_{j=1..k} prod_{i<=j} alpha_i tokens per round, the bonus included.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional

RECENT = 12  # outcomes behind the optimistic bound


def expected_tokens(alpha: Callable[[int], float], k: int) -> float:
    """E(k) = 1 + sum_{j=1..k} prod_{i<=j} alpha_i: tokens a chain of k commits per round, bonus
    included, where alpha(i) is P(draft position i + 1 accepted | positions 1..i accepted)."""
    e, run = 1.0, 1.0
    for i in range(k):
        run *= alpha(i)
        e += run
    return e


def wilson_upper(hits: float, n: float, z: float = 1.64) -> float:
    """The Wilson score interval's upper end for hits out of n (one-sided 95% at z = 1.64); 1.0
    with no outcomes. n may be a weighted count."""
    if n <= 0:
        return 1.0
    p = hits / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


@dataclass
class Acceptance:
    """One position's estimate: an exponentially weighted mean of its recent verify outcomes
    (the last ~1 / (1 - decay) count) plus PRIOR_WEIGHT pseudo-outcomes of a prior (the previous
    position's estimate; the first position has none). While the position goes unsampled (the
    policy drafts shorter, or decodes plainly), its outcomes' weight fades by `fade` per round,
    so an estimate that a few unlucky rounds pushed down drifts back towards the prior and the
    longer chain is tried (and measured) again instead of never."""
    decay: float
    fade: float
    PRIOR_WEIGHT: ClassVar[float] = 2.0
    _sum: float = 0.0     # weighted accepted outcomes
    _weight: float = 0.0  # weighted outcomes
    count: int = 0        # outcomes since construction or forget(), unweighted
    _recent: deque = field(default_factory=lambda: deque(maxlen=RECENT))

    def add(self, outcome: float) -> None:
        """outcome: 1.0 accepted, 0.0 rejected."""
        self._sum = self.decay * self._sum + outcome
        self._weight = self.decay * self._weight + 1.0
        self.count += 1
        self._recent.append(outcome)

    def unsampled(self) -> None:
        self._sum *= self.fade
        self._weight *= self.fade

    def forget(self) -> None:
        """Drops every outcome (the text may have changed since they were seen)."""
        self._sum = self._weight = 0.0
        self.count = 0
        self._recent.clear()

    def estimate(self, prior: float, prior_weight: Optional[float] = None) -> float:
        w = self.PRIOR_WEIGHT if prior_weight is None else prior_weight
        return (self._sum + w * prior) / (self._weight + w) if self._weight + w > 0 else prior

    def upper(self) -> float:
        """An optimistic bound on the acceptance: the Wilson upper end of the last RECENT outcomes
        (no prior). Short memory, wide interval: after a run of misses the estimate stays low for
        ~20 outcomes, while a handful of hits lifts this bound at once (exploration and the
        fallback's verdict read it)."""
        return wilson_upper(sum(self._recent), len(self._recent))
