"""When a plain step carries a probe ("where probes are scheduled"; the policy reads it).

While speculation is off, alpha_1 keeps being measured by probes: the drafter drafts one token
that is not verified, and the next committed token tells whether it was right (a head decode of
the recent context, not a target row). A hit halves the gap to the next probe, a miss doubles it
(up to `probe_every`): a predictable stretch is noticed within a few tokens, and an unpredictable
one costs one probe per `probe_every` tokens.

The gap never falls below 2 tokens, nor below the one at which probes (their time measured)
would take more than their budget of the plain decoding time: `probe_budget`, or, where a chain
might pay at the acceptance's optimistic bound, half the gain it would have there (up to
`stake_budget_max`): an estimate that probes alone sample recovers slowly (~20 outcomes), so
where a chain might pay, probes come as often as it could repay them.

Hopeless: where the measured costs need an acceptance above `hopeless_alpha` at every position
before any chain beats plain decoding (a compute-bound CPU with a small target: there even
perfect drafts gain 1.07x-1.25x, and a probe costs ~half a plain token), misses widen the gap up
to `hopeless_probe_every` instead. Hits still narrow it, so text that a head drafts right 9 times
in 10 turns speculation on within a few probes.

Re-check (after a fallback stretch, fallback.py): every acceptance outcome was dropped; a probe
comes every `recheck_gap` plain steps until the first position has `recheck_outcomes` outcomes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Protocol

from .costs import Ema


class Rates(Protocol):
    """What the schedule reads from the policy (policy.DraftPolicy)."""

    def cost(self, rows: int) -> Optional[float]: ...          # T(rows), seconds
    def breakeven_alpha(self) -> Optional[float]: ...          # None while a cost is unknown
    def gain_at_upper(self) -> Optional[float]: ...            # best chain / plain at alpha_upper


@dataclass
class ProbeSchedule:
    probe_every: int = 64        # most plain tokens between probes while speculation is off
    hopeless_alpha: float = 0.8  # break-even acceptance above which misses widen the gap ...
    hopeless_probe_every: int = 256  # ... up to this many tokens
    probe_budget: float = 0.02   # least share of the plain decoding time that probes may take ...
    stake_budget_max: float = 0.1  # ... and the most, where a chain might pay (budget())
    recheck_gap: int = 4         # plain steps between probes while acceptance is measured afresh ...
    recheck_outcomes: int = 8    # ... until the first position has this many outcomes
    rechecking: bool = True      # acceptance outcomes were dropped: probe every recheck_gap
    _since: int = 0              # plain steps since the last probe
    _gap: int = 0                # the adaptive gap (hits halve it, misses double it)
    _hopeless: Optional[bool] = None  # breakeven_alpha() > hopeless_alpha, refreshed every probe_every probes-due calls
    _hopeless_age: int = 0
    _c: Ema = field(default_factory=lambda: Ema(0.9))  # a probe's time, seconds

    def __post_init__(self) -> None:
        self._gap = self.probe_every

    def set_gap(self, gap: int) -> None:
        """Probes every `gap` plain steps at most and at least (tests, short texts)."""
        self.probe_every = self.hopeless_probe_every = self._gap = gap

    def observe(self, hit: bool, seconds: float) -> None:
        """A probe (its drafter time: seconds) drafted the committed token (hit) or not."""
        self._c.add(seconds)
        self._gap = max(2, self._gap // 2) if hit else min(2 * self._gap, self._cap())

    def outcome_seen(self, first_outcomes: int) -> None:
        """The first position now has first_outcomes outcomes: a re-check ends at recheck_outcomes."""
        if self.rechecking and first_outcomes >= self.recheck_outcomes:
            self.rechecking = False

    def recheck(self) -> None:
        """Acceptance is measured afresh (the caller dropped its outcomes)."""
        self.rechecking, self._since = True, 0

    def due(self, rates: Rates) -> bool:
        """Called on plain rounds: True when this one should carry an (unverified) probe draft."""
        self._since += 1
        if self._since < (self.recheck_gap if self.rechecking else self._gap):  # the shorter gap
            return False
        self._hopeless_age += 1
        if self._hopeless is None or self._hopeless_age >= self.probe_every:
            breakeven = rates.breakeven_alpha()
            self._hopeless = None if breakeven is None else breakeven > self.hopeless_alpha
            self._hopeless_age = 0
        if self._since >= self.interval(rates):
            self._since = 0
            return True
        return False

    def steps_to_next(self, rates: Rates) -> int:
        """Plain rounds before the next probe at the current estimates (no side effects)."""
        return max(self.interval(rates) - self._since - 1, 0)

    def interval(self, rates: Rates) -> int:
        """Plain steps between probes: recheck_gap while re-checking; else within their budget
        (gap >= probe time / (budget * T(1))), the adaptive gap capped."""
        if self.rechecking:
            return self.recheck_gap
        t1, c = rates.cost(1), self._c.value
        least = 2 if t1 is None or c is None else math.ceil(c / (self.budget(rates) * t1))
        return min(max(self._gap, least), self._cap())

    def budget(self, rates: Rates) -> float:
        """The share of plain decoding time probes may take: half the gain the best chain would
        have at the acceptance's optimistic bound, between probe_budget and stake_budget_max."""
        gain = rates.gain_at_upper()
        if gain is None:
            return self.probe_budget
        return min(max(self.probe_budget, 0.5 * (gain - 1.0)), self.stake_budget_max)

    def _cap(self) -> int:
        return self.hopeless_probe_every if self._hopeless else self.probe_every
