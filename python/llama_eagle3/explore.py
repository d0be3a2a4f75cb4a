"""Re-measuring the cost of chain lengths the policy is not drafting ("where exploration is decided").

T(n) of a chain length is sampled only while the policy drafts it, so a cost from calibration or
from an early stretch (taken while something else loaded the machine, or interpolated from other
row counts) would decide forever against a length that is in fact best (measured: a stale T(4)
40% high kept auto 15% below chain-3). So when the chosen length k has a neighbour k +- 1 whose
row count was last sampled over its explore gap of rounds ago, the next `explore_rounds` rounds
draft that neighbour and their decodes replace its older samples: step by step the policy climbs
to the best length even past a stale estimate further on.

From plain decoding (k = 0; T(1) has its own refresh) the chain the model rates best at the
acceptance's optimistic bound (alpha_upper) is re-measured (T(n) need not grow steadily:
llama.cpp's repacked CPU kernels take rows in blocks of 4), and only while at that bound it beats
plain decoding: where speculation is hopeless it is not paid for, and a run of probe hits after
many misses gets verify rounds (which sample every position) within a few probes.

What a re-measurement costs is priced on the measured table (DraftPolicy.detour_loss: its rounds
at the neighbour's rate instead of the chosen one's, and two shape changes), and kept small:
- its length: a neighbour predicted within a few percent of the chosen length needs
  explore_rounds rounds to resolve the difference through decode times that vary by 10-20% here;
  one predicted far off (a chain whose rows miss llama.cpp's cheap block of 4 on a CPU: 15-40%
  slower) needs two kept samples to be confirmed far off (rounds_for);
- its spacing: the gap starts at explore_every rounds; each time the neighbour, freshly
  measured, still loses to the chosen length, it doubles and is at least what spends `budget`
  of the time on re-measurements (budget_gap), up to explore_every_max. Where the choice is
  right, exploring then costs about `budget`. The first re-measurement keeps the fixed schedule:
  a cost taken under load, or interpolated, can make a neighbour look far worse than it is.
Modelled (tests/policy_sim.py costs, the llama-8b shape's rows-of-4 table, 400 tokens): fixed
8-round re-measurements every 64 rounds cost 5.4% of the time at acceptance 0.9.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .policy import DraftPolicy


@dataclass
class Explorer:
    explore_every: int = 64      # rounds after which a neighbouring length's cost is re-measured ...
    explore_every_max: int = 1024  # ... the gap doubling up to this while re-measurements confirm it
    explore_rounds: int = 8      # verify rounds per re-measurement at most (the first decode, after a shape change, is not kept)
    budget: float = 0.01         # share of the time re-measurements (and T(1)'s refreshes, policy.py) aim to cost
    noise: float = 0.15          # a decode time's relative spread on this project's VM (rounds_for)
    # (64 / 8 rather than 32 / 4: medians of ~3 fresh samples, on a VM whose decode times vary by 10-20%,
    # kept auto switching between chains of 2, 3 and 4 at acceptance 0.95 on SmolLM2; A/B against a fixed
    # chain-3, 2 x 10 prompts x 128 tokens each: 0.81-0.95 of its rate before, 0.94-1.04 after)
    k: int = 0                   # chain length being re-measured (0: none) ...
    left: int = 0                # ... for this many more verify rounds
    _from: int = 0               # the chosen length it is a neighbour of
    _fresh: list[float] = field(default_factory=list)  # its kept samples so far
    _sampled_at: dict[int, int] = field(default_factory=dict)  # rows -> decode clock at its latest kept sample
    _gap: dict[int, int] = field(default_factory=dict)         # rows -> rounds between re-measurements

    def sampled(self, rows: int, clock: int) -> None:
        """A decode of `rows` rows was kept at decode number `clock`."""
        self._sampled_at[rows] = clock

    def keep_apart(self, rows: int, seconds: float) -> bool:
        """A kept decode of the row count under re-measurement is held back until it ends."""
        if self.left > 0 and rows == self.k + 1:
            self._fresh.append(seconds)
            return True
        return False

    def round_done(self, policy: "DraftPolicy") -> None:
        """A verify round of the re-measurement ran (the drafter may have drafted fewer than asked,
        and the first decode after the shape change is not kept: such rounds count, so a
        re-measurement always ends). After the last one, its kept samples replace the older ones
        if there are at least 2 (one decode stalled by something else must not become the
        estimate), else join them. The gap doubles if the neighbour still loses to the length it
        was explored from (a decode time varies by 10-20% here, so the decision, not the figure,
        says whether anything was learnt), and returns to explore_every if it wins."""
        if self.left <= 0:
            return
        self.left -= 1
        if self.left > 0:
            return
        rows, fresh, costs = self.k + 1, self._fresh, policy.costs
        if len(fresh) >= 2 or (fresh and costs.provisional(rows)):
            costs.replace(rows, fresh)
        elif fresh:
            costs.extend(rows, fresh)
        mine, theirs = policy.expected_rate(self.k), policy.expected_rate(self._from)
        held = mine is not None and theirs is not None and mine <= theirs
        gap = self._gap.get(rows, self.explore_every)
        if held:
            loss = policy.detour_loss(self._from, self.k, self.rounds_for(policy, self._from, self.k))
            self._gap[rows] = min(max(2 * gap, self.budget_gap(policy, self._from, loss)), self.explore_every_max)
        else:
            self._gap[rows] = self.explore_every
        self.k, self._fresh = 0, []

    def rounds_for(self, policy: "DraftPolicy", k: int, j: int) -> int:
        """Verify rounds re-measuring chain length j next to the chosen k: the first (after the
        shape change) is not kept, and enough kept samples to tell a rate deficit d = 1 - rate(j)
        / rate(k) through decode times of relative spread `noise`: (noise / d)^2, at least 2."""
        if k == 0:
            return self.explore_rounds // 2  # from plain decoding: whether drafting pays at all
        mine, theirs = policy.expected_rate(j), policy.expected_rate(k)
        if not mine or not theirs or mine >= theirs:
            return self.explore_rounds
        kept = math.ceil((self.noise / (1.0 - mine / theirs)) ** 2)
        return 1 + min(max(kept, 2), self.explore_rounds - 1)

    def budget_gap(self, policy: "DraftPolicy", k: int, loss: Optional[float]) -> int:
        """Rounds of chain length k (0: plain steps) over which a re-measurement that loses
        `loss` seconds against k costs `budget` of the time (0 while a cost is unknown)."""
        c = policy.costs.round_cost(k)
        if loss is None or not c:
            return 0
        return math.ceil(loss / (self.budget * c))

    def start(self, policy: "DraftPolicy", k: int, clock: int) -> bool:
        """Whether a neighbour of chain length k is due for re-measurement; if so, the next
        explore_rounds rounds draft it (self.k)."""
        rate = policy.expected_rate(k)
        upper = policy.alpha_upper()
        candidates = (k + 1, k - 1) if k > 0 else (
            max(range(1, policy.k_max + 1), key=lambda j: policy.expected_rate(j, upper) or 0.0),)
        for j in candidates:
            rows = j + 1
            if not 1 <= j <= policy.k_max:
                continue
            if clock - self._sampled_at.get(rows, -(1 << 30)) < self._gap.get(rows, self.explore_every):
                continue
            other = policy.expected_rate(j, upper) if k == 0 else policy.expected_rate(j)
            if k == 0 and (rate is None or other is None or other <= rate):
                continue
            self.k, self.left, self._from = j, self.rounds_for(policy, k, j), k
            return True
        return False
