"""Measured costs of a round ("where costs are measured"), read by the draft policy (policy.py).

All in seconds as measured in this process, on this machine and backend:

    T(n)   a target decode of n rows (the last token + n - 1 drafts): the median of its last
           32 samples, so that one decode stalled by something else cannot flip a decision
    c      one draft step of the drafter (the median of its last 16 samples)
    o(n)   what a round of n verify rows costs besides the two models: sampling its rows, KV
           rollback, the drafter's bookkeeping, the engine's loop (the median of the last 16
           rounds of n rows)
    u      what the consumer of the token stream takes per token between two resumes of the
           generator (detokenizing, stop strings, streaming chunks): paid per committed token
           whatever the method, so it dilutes speculation's gain (weighted mean)
    r      a shape change: what the first decode of a row count after another one costs over
           that row count's T(n) (llama.cpp rebuilds its compute graph for the new shape; on this
           project's CPU, SmolLM2: 0.6-1.2 ms, a first verify round after a change 2 ms above the
           steady ones), the median of the last 16 such decodes. Not part of C(k): it prices switching, which re-measurements
           (explore.py) pay twice

Medians, not means: one round stalled by something else (a page fault, another process) must not
make a shape look dear, since a shape the policy stops drafting is not measured again soon (a
mean's spike in o(4) kept auto on chains of 1 at acceptance 0.95 in the simulated bench).

So a chain of k drafts costs C(k) = T(k + 1) + k * c + o(k + 1) per round and commits its
tokens at E(k) / (C(k) + E(k) * u).

A drafter priced per proposal (per_proposal: DFlash, dflash.py, drafts its whole block in one head
decode) has its cost measured per proposal instead of per drafted token: C(k) = T(k + 1) + c(k) +
o(k + 1), c(k) the median of recent proposals of k drafts, interpolated between measured lengths
(one block decode is no fixed price on a CPU: at SmolLM2's shape 2.5 ms for 4 drafts, 9.0 ms for
16), and before any length is measured the median proposal of any length (step).

Start-up calibration (calibration.py) measures T(n) and c on an empty context, where they
come out lower than mid-generation; such "provisional" samples stand only until the first
sample of the same shape from a generation, which replaces them. T(n) of a row count never
measured is interpolated linearly between measured ones (extrapolated beyond them): T(n) is no
straight line on a CPU (llama.cpp's repacked kernels take rows in blocks of 4), so calibration
measures every row count the policy compares.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Optional

T_SAMPLES = 32  # decodes kept per row count
RECENT = 16     # draft steps and round overheads kept per row count


@dataclass
class Ema:
    """Exponentially weighted mean: value <- decay * value + (1 - decay) * x."""
    decay: float
    value: Optional[float] = None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.decay * self.value + (1 - self.decay) * x


class RecentMedian:
    """The median of the last RECENT samples, cached until the next one."""

    def __init__(self) -> None:
        self._samples: deque = deque(maxlen=RECENT)
        self._median: Optional[float] = None

    def add(self, x: float) -> None:
        self._samples.append(x)
        self._median = None

    @property
    def value(self) -> Optional[float]:
        if self._median is None and self._samples:
            self._median = statistics.median(self._samples)
        return self._median


class CostTable:
    def __init__(self, per_proposal: bool = False) -> None:
        self.per_proposal = per_proposal        # c is one proposal's cost whatever its length (DFlash)
        self._t: dict[int, deque] = {}           # rows -> recent decode seconds
        self._t_median: dict[int, float] = {}    # cached until the next sample of that row count
        self._provisional: set[int] = set()      # row counts whose samples are calibration's
        self._step = RecentMedian()
        self._step_provisional = False
        self._overhead: dict[int, RecentMedian] = {}
        self._proposal: dict[int, RecentMedian] = {}  # per_proposal: drafts asked -> seconds of a proposal
        self._consumer = Ema(0.95)
        self._rebuild = RecentMedian()

    # ---- T(n) ---------------------------------------------------------------------------

    def add(self, rows: int, seconds: float, provisional: bool = False) -> None:
        """One decode of `rows` rows. A generation's first sample replaces calibration's."""
        if rows in self._provisional and not provisional:
            self._t.pop(rows, None)
        self._provisional.discard(rows)
        self._t.setdefault(rows, deque(maxlen=T_SAMPLES)).append(seconds)
        self._t_median.pop(rows, None)
        if provisional:
            self._provisional.add(rows)

    def replace(self, rows: int, samples: Iterable[float]) -> None:
        """A re-measurement's samples take the place of the older ones."""
        self._t[rows] = deque(samples, maxlen=T_SAMPLES)
        self._t_median.pop(rows, None)
        self._provisional.discard(rows)

    def extend(self, rows: int, samples: Iterable[float]) -> None:
        for s in samples:
            self.add(rows, s)

    def keep_last(self, rows: int, n: int) -> None:
        """Drops all but the last n samples of `rows` (a refresh: older ones may be stale)."""
        if rows in self._t:
            self._t[rows] = deque(list(self._t[rows])[-n:], maxlen=T_SAMPLES)
            self._t_median.pop(rows, None)

    def provisional(self, rows: int) -> bool:
        return rows in self._provisional

    def n(self, rows: int) -> int:
        """Samples kept of `rows`."""
        return len(self._t.get(rows, ()))

    def rows(self) -> list[int]:
        return sorted(self._t)

    def median(self, rows: int) -> float:
        m = self._t_median.get(rows)
        if m is None:
            m = self._t_median[rows] = statistics.median(self._t[rows])
        return m

    def t(self, rows: int) -> Optional[float]:
        """T(rows): its median, else interpolated/extrapolated linearly from measured rows; None
        while fewer than two row counts are measured."""
        if rows in self._t:
            return self.median(rows)
        known = [(n, self.median(n)) for n in self.rows()]
        if len(known) < 2:
            return None
        lo = [p for p in known if p[0] < rows]
        hi = [p for p in known if p[0] > rows]
        (n0, t0), (n1, t1) = (lo[-1], hi[0]) if lo and hi else (known[-2], known[-1]) if lo else (known[0], known[1])
        return t0 + (t1 - t0) * (rows - n0) / (n1 - n0)

    # ---- the drafter's step, a round's overhead, the consumer ---------------------------

    def add_step(self, seconds: float, provisional: bool = False) -> None:
        """One draft step (seconds per drafted token; per_proposal: per proposal). Calibration's
        stands until a generation's."""
        if self._step_provisional and not provisional:
            self._step = RecentMedian()
        self._step.add(seconds)
        self._step_provisional = provisional

    @property
    def step(self) -> Optional[float]:
        return self._step.value

    def add_overhead(self, rows: int, seconds: float) -> None:
        self._overhead.setdefault(rows, RecentMedian()).add(max(seconds, 0.0))

    def overhead(self, rows: int) -> float:
        """o(rows); a row count not measured takes the nearest measured one's (0 before any)."""
        if rows in self._overhead:
            return self._overhead[rows].value or 0.0
        if not self._overhead:
            return 0.0
        nearest = min(self._overhead, key=lambda n: (abs(n - rows), -n))
        return self._overhead[nearest].value or 0.0

    def add_rebuild(self, rows: int, seconds: float) -> None:
        """The first decode of `rows` rows after a decode of another row count took `seconds`
        (kept apart from T(rows): it is no steady-state sample)."""
        if rows in self._t:
            self._rebuild.add(max(seconds - self.median(rows), 0.0))

    @property
    def rebuild(self) -> float:
        """r: what a shape change adds to the next decode (0 before one is measured)."""
        return self._rebuild.value or 0.0

    def add_consumer(self, seconds: float) -> None:
        self._consumer.add(max(seconds, 0.0))

    @property
    def consumer(self) -> float:
        return self._consumer.value or 0.0

    def add_proposal(self, k: int, seconds: float) -> None:
        """per_proposal: one proposal asked for k drafts took `seconds` (its block decode included)."""
        self._proposal.setdefault(k, RecentMedian()).add(seconds)

    def draft_cost(self, k: int) -> float:
        """Drafting k tokens: k * c, or per_proposal c(k) (module docstring); 0 for k = 0."""
        if k == 0:
            return 0.0
        if not self.per_proposal:
            return k * (self.step or 0.0)
        known = sorted((n, m.value) for n, m in self._proposal.items() if m.value is not None)
        exact = dict(known).get(k)
        if exact is not None:
            return exact
        if len(known) < 2:
            return self.step or 0.0
        lo = [q for q in known if q[0] < k]
        hi = [q for q in known if q[0] > k]
        (n0, c0), (n1, c1) = (lo[-1], hi[0]) if lo and hi else (known[-2], known[-1]) if lo else (known[0], known[1])
        return max(c0 + (c1 - c0) * (k - n0) / (n1 - n0), 0.0)

    def round_cost(self, k: int) -> Optional[float]:
        """C(k) = T(k + 1) + k * c + o(k + 1) (per_proposal: c instead of k * c); None while
        T(k + 1) (or c, for k > 0) is unknown."""
        t = self.t(k + 1)
        if t is None or (k > 0 and self.step is None):
            return None
        return t + self.draft_cost(k) + self.overhead(k + 1)

    def snapshot(self) -> dict:
        return {"decode_ms": {n: round(1e3 * self.median(n), 3) for n in self.rows()},
                "draft_step_ms": None if self.step is None else round(1e3 * self.step, 3),
                **({"draft_priced_per": "proposal",
                    "proposal_ms": {n: round(1e3 * (m.value or 0.0), 3) for n, m in sorted(self._proposal.items())}}
                   if self.per_proposal else {}),
                "round_overhead_ms": {n: round(1e3 * (e.value or 0.0), 3) for n, e in sorted(self._overhead.items())},
                "consumer_ms_per_token": round(1e3 * self.consumer, 3), "rebuild_ms": round(1e3 * self.rebuild, 3)}
