"""How many tokens to draft this round ("where the draft length is chosen").

A round that drafts k tokens commits E(k) tokens on average and costs C(k):

    E(k) = 1 + sum_{j=1..k} prod_{i<=j} alpha_i        alpha_i: P(draft i accepted | drafts < i accepted)
    C(k) = T(k + 1) + k * c                              T(n): target decode of n rows, c: one head step

and the policy drafts argmax_k E(k) / C(k) over 0..k_max; k = 0 is plain decoding. All
three inputs are measured in this process, on this machine and backend: T(n) from the
engine's own decodes (the median of the last 32 of each row count: a decode stalled by
something else must not flip the decision; the first decode after a change of row count is
left out, since llama.cpp rebuilds its graph then; T(1) is re-measured every
t1_refresh_every verify rounds), so that a compute-bound CPU, where T(n) grows
with n, and a bandwidth-bound GPU, where T(n) ~ T(1), each get the right answer; c from the
head's draft calls, alpha from recent rounds (exponentially weighted, so a predictable
stretch of text turns speculation on and a hard one turns it off).

Warm-up: the engine measures T(n) and c at start-up (calibration.py), so that no
generation pays for warm-up rounds; without that, plain rounds run until T(1) is measured,
then k_max until T(k_max + 1) and c are. Rows never measured are interpolated linearly
between measured ones (extrapolated beyond them). While speculation is
off, alpha_1 keeps being measured by probes: the head drafts one token that is not
verified, and the next committed token tells whether it was right (it costs a head decode of
the recent context, not a target row). A hit halves the gap to the next probe, a miss doubles
it (up to `probe_every`): a predictable stretch is noticed within a few tokens, and an
unpredictable one costs one probe per `probe_every` tokens. The gap never falls below
2 tokens, nor below the one at which probes (their time measured) would take more than
`probe_budget` of the plain decoding time. Where the measured
costs need an acceptance above `hopeless_alpha` at every position before any chain beats
plain decoding (breakeven_alpha(); a compute-bound CPU with a small target), misses widen the
gap up to `hopeless_probe_every` instead: there even perfect drafts gain little (on this
project's CPU 1.07x to 1.25x), and each probe costs a head decode of the recent context (~6 ms
there, half a plain token). Hits still narrow it, so text that a head drafts right 9 times in
10 (a chain of 3 then gains ~1.16x on that CPU) turns speculation on within a few probes
instead of after hundreds of plain tokens.

Exploration: T(n) of a chain length is sampled only while the policy drafts it, so a cost from
calibration or from an early stretch (taken while something else loaded the machine, or
interpolated from other row counts) would decide forever against a length that is in fact
best (measured: a stale T(4) 40% high kept auto 15% below chain-3). So when the chosen length
k has a neighbour k +- 1 whose row count was last sampled over its explore gap of rounds ago,
the next `explore_rounds` rounds draft that neighbour and their decodes replace its older
samples: step by step the policy climbs to the best length even past a stale estimate further
on. From plain decoding (k = 0; T(1) has its own refresh) the chain the model rates best is
re-measured (T(n) need not grow steadily), and only while its predicted rate is within
`explore_margin` of plain's: where speculation is
hopeless (a CPU, a weak head) it is not paid for. The gap starts at explore_every rounds and
doubles (up to explore_every_max) each time the neighbour, freshly measured, still loses to the
chosen length, so where the choice is right exploring costs next to nothing.

Trees (tree_width > 1, tree.py): a tree of `tree_nodes` nodes and depth k_max commits
E_tree = gain * E(k_max) tokens per round and costs T(tree_nodes + 1) + its drafting time,
with gain (tree tokens per round over the chain's E(k_max) at the time) and the drafting
time measured on tree rounds. `warmup_rounds` tree rounds measure them, unless even a tree
that committed k_max + 1 tokens every round would lose to the best chain (tree_bound());
from then on a round drafts the tree when its rate beats the best chain's. On a
compute-bound CPU T(n) grows with n and the tree loses; on a bandwidth-bound GPU T(n) ~ T(1)
and the tree's extra acceptance is nearly free.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional


def expected_tokens(alpha: Callable[[int], float], k: int) -> float:
    """E(k) = 1 + sum_{j=1..k} prod_{i<=j} alpha_i: tokens a chain of k commits per round, bonus
    included, where alpha(i) is P(draft position i + 1 accepted | positions 1..i accepted)."""
    e, run = 1.0, 1.0
    for i in range(k):
        run *= alpha(i)
        e += run
    return e


@dataclass
class _Ema:
    decay: float
    value: Optional[float] = None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.decay * self.value + (1 - self.decay) * x


@dataclass
class _Acceptance:
    """P(a draft position is accepted | the earlier ones were): an exponentially weighted mean
    of its recent verify outcomes (the last ~1 / (1 - decay) count) plus PRIOR_WEIGHT
    pseudo-outcomes of a prior (the previous position's estimate; the first position has none).
    While the position goes unsampled (the policy drafts shorter, or decodes plainly), its
    outcomes' weight fades by `fade` per round, so an estimate that a few unlucky rounds pushed
    down drifts back towards the prior and the longer chain is tried (and measured) again
    instead of never."""
    decay: float
    fade: float
    PRIOR_WEIGHT: ClassVar[float] = 2.0
    _sum: float = 0.0     # weighted accepted outcomes
    _weight: float = 0.0  # weighted outcomes

    def add(self, outcome: float) -> None:
        """outcome: 1.0 accepted, 0.0 rejected."""
        self._sum = self.decay * self._sum + outcome
        self._weight = self.decay * self._weight + 1.0

    def unsampled(self) -> None:
        self._sum *= self.fade
        self._weight *= self.fade

    def estimate(self, prior: float, prior_weight: Optional[float] = None) -> float:
        w = self.PRIOR_WEIGHT if prior_weight is None else prior_weight
        return (self._sum + w * prior) / (self._weight + w) if self._weight + w > 0 else prior


@dataclass
class DraftPolicy:
    k_max: int
    adaptive: bool = True
    tree_width: int = 1          # > 1: trees of this width are a candidate shape
    tree_nodes: int = 0          # node budget of a tree
    warmup_rounds: int = 4       # tree rounds that measure its gain before the cost model decides
    probe_every: int = 64        # most plain tokens between probes while speculation is off
    hopeless_alpha: float = 0.8  # break-even acceptance above which misses widen the probe gap ...
    hopeless_probe_every: int = 256  # ... up to this many tokens
    alpha_prior: float = 0.5
    alpha_decay: float = 0.95    # acceptance estimates weigh about the last 1 / (1 - alpha_decay) outcomes ...
    alpha_fade: float = 0.97     # ... and fade back towards the previous position's by this per unsampled round
    probe_budget: float = 0.02   # most of the plain decoding time that probes may take
    graph_rebuilds: bool = False  # offloaded (CUDA graphs): start-up calibration warms each shape up twice
    t1_refresh_every: int = 32   # verify rounds after which speculation pauses to re-measure T(1) (doubling,
                                 # up to explore_every_max, while speculation still wins after one) ...
    t1_refresh_samples: int = 4  # ... with this many kept single-row decodes
    explore_every: int = 32      # rounds after which a neighbouring length's cost is re-measured ...
    explore_every_max: int = 1024  # ... the gap doubling up to this while re-measurements confirm it
    explore_rounds: int = 4      # verify rounds per re-measurement (the first decode, after a shape change, is not kept)
    explore_margin: float = 0.1   # from plain decoding, a chain predicted this much slower is not re-measured
    REDECIDE_EVERY: ClassVar[int] = 16  # single-row decodes (plain steps) after which decide() recomputes
    # rows -> recent decodes in seconds; medians cached until the next sample of that row count
    _t: dict[int, deque] = field(default_factory=dict)
    _t_median: dict[int, float] = field(default_factory=dict)
    _c: _Ema = field(default_factory=lambda: _Ema(0.9))
    _alpha: list[_Acceptance] = field(default_factory=list)
    _tree_gain: _Ema = field(default_factory=lambda: _Ema(0.85))
    _tree_c: _Ema = field(default_factory=lambda: _Ema(0.9))
    _probe_c: _Ema = field(default_factory=lambda: _Ema(0.9))
    _tree_rounds: int = 0
    _since_probe: int = 0
    _probe_gap: int = 0
    _hopeless: Optional[bool] = None  # breakeven_alpha() > hopeless_alpha, refreshed every probe_every tokens
    _hopeless_age: int = 0
    _decision: Optional[tuple[bool, int]] = None  # decide()'s answer until a measurement changes it
    _decode_samples: int = 0                     # observe_decode calls since it was made
    _last_rows: int = 0                          # row count of the previous target decode
    _rounds_since_t1: int = 0                    # verify rounds since T(1) was last refreshed
    _t1_streak: int = 0                          # T(1) samples kept since the last verify round
    _t1_gap: int = 0                             # verify rounds between refreshes (t1_refresh_every at first)
    _rounds: int = 0                             # observe_decode calls so far (the explore clock)
    _sampled_at: dict[int, int] = field(default_factory=dict)  # rows -> _rounds at its latest kept sample
    _explore_gap: dict[int, int] = field(default_factory=dict)  # rows -> rounds between re-measurements
    _explore_k: int = 0                          # chain length being re-measured (0: none) ...
    _explore_left: int = 0                       # ... for this many more verify rounds
    _explore_from: int = 0                       # the chosen length it is a neighbour of
    _explore_fresh: list[float] = field(default_factory=list)  # its kept samples so far (as stored in _t)
    _provisional: set[int] = field(default_factory=set)  # row counts whose samples are start-up calibration's
    _c_provisional: bool = False                 # the head step estimate is start-up calibration's

    def __post_init__(self) -> None:
        self._alpha = [_Acceptance(self.alpha_decay, self.alpha_fade) for _ in range(self.k_max)]
        self._probe_gap = self.probe_every
        self._t1_gap = self.t1_refresh_every

    # ---- measurements ------------------------------------------------------------------

    def observe_calibration(self, rows: int, seconds: float) -> None:
        """A start-up calibration decode (calibration.py): on an empty context, so faster than the
        same shape mid-generation (on this project's CPU, SmolLM2: T(1) 9.7 ms against 10.9, T(2)
        14.4 against 17.2). It stands until that row count's first sample from a generation,
        which replaces it."""
        self._provisional.discard(rows)
        self.observe_decode(rows, seconds)
        self._provisional.add(rows)

    def observe_decode(self, rows: int, seconds: float) -> None:
        """A target decode of `rows` rows (last token + drafts). The first decode after a change
        of row count is not kept once that count has 2 samples: llama.cpp rebuilt its compute
        graph for the new shape (on every backend: its graph reuse needs the same batch shape;
        offloaded, CUDA graphs too), which neither shape pays while it runs steadily. Measured on
        this project's CPU, SmolLM2, chains at acceptance 0.95: T(2) 23.0 ms after a change
        against 17.7 steady, T(1) 13.2 against 11.1; kept, those samples made the shapes the
        policy tries least look 10-30% dearer than they are."""
        switched, self._last_rows = rows != self._last_rows, rows
        self._decode_samples += 1
        self._rounds += 1
        if rows > 1 or self._decode_samples >= self.REDECIDE_EVERY or self._n(1) < 2:  # (warm-up)
            self._decision = None
        if switched and self._n(rows) >= 2:
            return
        if rows == 1:  # a plain step: positions past the first go unsampled (probes sample the first)
            for a in self._alpha[1:]:
                a.unsampled()
        refresh = rows == 1 and self._rounds_since_t1 >= self._t1_gap
        if refresh and self._t1_streak == 0 and 1 in self._t:
            # samples from before the verify rounds may be stale: the last t1_refresh_samples stay,
            # so that the new median is of twice as many (4 decodes varied by 10-30% here)
            self._t[1] = deque(list(self._t[1])[-self.t1_refresh_samples:], maxlen=32)
            self._t_median.pop(1, None)
        self._sampled_at[rows] = self._rounds
        if self._explore_left > 0 and rows == self._explore_k + 1:  # kept apart until the re-measurement ends
            self._explore_fresh.append(seconds)
            return
        if rows in self._provisional:
            self._provisional.discard(rows)
            self._t.pop(rows, None)
        self._t.setdefault(rows, deque(maxlen=32)).append(seconds)
        self._t_median.pop(rows, None)
        if rows == 1:
            self._t1_streak += 1
        if refresh and self._t1_streak >= self.t1_refresh_samples:
            # speculation still beats plain decoding: the next refresh can wait twice as long
            held = self.choose() > 0
            self._t1_gap = min(2 * self._t1_gap, self.explore_every_max) if held else self.t1_refresh_every
            self._rounds_since_t1, self._decision = 0, None

    def _explored(self) -> None:
        """A verify round of the re-measurement ran (the head may have drafted fewer than asked,
        and the first decode after the shape change is not kept: such rounds count, so a
        re-measurement always ends). After the last one, its kept samples replace the older ones
        if there are at least 2 (one decode stalled by something else must not become the
        estimate), else join them. If the neighbour still loses to the length it was explored
        from, its gap doubles (a measured decode time varies by 10-20% here, so the decision, not
        the figure, says whether anything was learnt); if it wins, the gap returns to
        explore_every."""
        self._explore_left -= 1
        if self._explore_left > 0:
            return
        rows, fresh = self._explore_k + 1, self._explore_fresh
        if len(fresh) >= 2 or (fresh and rows in self._provisional):
            self._t[rows] = deque(fresh, maxlen=32)
            self._provisional.discard(rows)
        elif fresh:
            self._t.setdefault(rows, deque(maxlen=32)).extend(fresh)
        self._t_median.pop(rows, None)
        mine, theirs = self.expected_rate(self._explore_k), self.expected_rate(self._explore_from)
        held = mine is not None and theirs is not None and mine <= theirs
        gap = self._explore_gap.get(rows, self.explore_every)
        self._explore_gap[rows] = min(2 * gap, self.explore_every_max) if held else self.explore_every
        self._explore_k, self._explore_fresh = 0, []

    def observe_calibration_step(self, seconds: float) -> None:
        """A start-up head step (calibration.py): from an empty head context with nothing to catch
        up, about 0.5 ms on this project's CPU against 1.3-1.6 ms per step in generation. It
        stands until the first draft of a generation, which replaces it."""
        self._c_provisional = False
        self.observe_draft(1, seconds)
        self._c_provisional = True

    def observe_draft(self, steps: int, seconds: float) -> None:
        self._decision = None
        if steps > 0:
            if self._c_provisional:
                self._c, self._c_provisional = _Ema(self._c.decay), False
            self._c.add(seconds / steps)

    def _verified(self) -> None:
        """A verify round (chain or tree) ran: the decision is remade and T(1)'s refresh clock ticks."""
        self._decision = None
        self._rounds_since_t1, self._t1_streak = self._rounds_since_t1 + 1, 0
        if self._explore_left > 0:
            self._explored()

    def observe_round(self, drafted: int, accepted: int) -> None:
        """Draft positions 1..drafted were verified; the first `accepted` matched."""
        self._verified()
        sampled = min(drafted, accepted + 1, self.k_max)
        for i, a in enumerate(self._alpha):
            if i < sampled:
                a.add(float(i < accepted))
            else:
                a.unsampled()

    def observe_tree(self, committed: int, draft_seconds: float) -> None:
        """A tree round committed `committed` tokens (bonus included); drafting took draft_seconds."""
        self._verified()
        self._tree_rounds += 1
        self._tree_gain.add(committed / self.expected_tokens(self.k_max))
        self._tree_c.add(draft_seconds)

    def observe_probe(self, hit: bool, seconds: float) -> None:
        """A probe (its head time: seconds) drafted the committed token (hit) or not."""
        self._decision = None
        self._alpha[0].add(float(hit))
        for a in self._alpha[1:]:
            a.unsampled()
        self._probe_c.add(seconds)
        self._probe_gap = max(2, self._probe_gap // 2) if hit else min(2 * self._probe_gap, self._probe_cap())

    def _probe_cap(self) -> int:
        return self.hopeless_probe_every if self._hopeless else self.probe_every

    # ---- decisions -------------------------------------------------------------------

    def alpha(self, i: int) -> float:
        """Estimated alpha_{i+1}; a position not measured (lately) is assumed as good as the one
        before it, so that drafting deeper gets tried (and measured) when the first positions do well."""
        if i == 0:  # sampled by every verify round and probe: alpha_prior only until the first
            return self._alpha[0].estimate(self.alpha_prior, prior_weight=0.0)
        return self._alpha[i].estimate(self.alpha(i - 1))

    def cost(self, rows: int) -> Optional[float]:
        """T(rows): the median of its recent decodes, else interpolated/extrapolated linearly
        from measured rows. In seconds as measured: kept until 2026-11-30 relative to the T(1) of
        the time and scaled by today's, T(n) carried T(1)'s noise twice (the simulated bench
        found auto's T(2)..T(5) 20-35% above the fixed chains' own); staleness (a longer context,
        a busier machine) is what re-measurements and T(1)'s refresh are for."""
        if rows in self._t:
            return self._median(rows)
        known = sorted((n, self._median(n)) for n in self._t)
        if len(known) < 2:
            return None
        lo = [p for p in known if p[0] < rows]
        hi = [p for p in known if p[0] > rows]
        (n0, t0), (n1, t1) = (lo[-1], hi[0]) if lo and hi else (known[-2], known[-1]) if lo else (known[0], known[1])
        return t0 + (t1 - t0) * (rows - n0) / (n1 - n0)

    def expected_tokens(self, k: int) -> float:
        """E(k): tokens a chain of k commits per round."""
        return expected_tokens(self.alpha, k)

    def expected_rate(self, k: int) -> Optional[float]:
        """E(k) / C(k) in tokens per second, or None while a cost is unknown."""
        t = self.cost(k + 1)
        if t is None or (k > 0 and self._c.value is None):
            return None
        return self.expected_tokens(k) / (t + k * (self._c.value or 0.0))

    def tree_rate(self) -> Optional[float]:
        """E_tree / C_tree in tokens per second, or None before tree rounds were measured."""
        t = self.cost(self.tree_nodes + 1)
        if self._tree_gain.value is None or t is None:
            return None
        return self._tree_gain.value * self.expected_tokens(self.k_max) / (t + self._tree_c.value)

    def _warming_up(self) -> bool:
        """T(1) not measured yet: plain rounds; T(k_max + 1) or c not yet: chains of k_max."""
        return self._n(1) < 2 or self._n(self.k_max + 1) < 2 or self._c.value is None

    def tree_bound(self) -> Optional[float]:
        """The most a tree could commit per second: k_max + 1 tokens every round, drafted no
        slower than a chain of k_max. Trees are not even tried where this loses to a chain."""
        t = self.cost(self.tree_nodes + 1)
        return None if t is None or self._c.value is None else (self.k_max + 1) / (t + self.k_max * self._c.value)

    def decide(self) -> tuple[bool, int]:
        """(draft a tree?, chain length) for this round: choose_tree() and choose(), recomputed
        after any measurement but T(1)'s and every REDECIDE_EVERY plain steps (T(1) drifts
        slowly; a plain step then costs no decision). Every t1_refresh_every verify rounds (doubling
        while speculation still wins after a refresh), plain
        steps until t1_refresh_samples T(1) samples are kept (the first step follows a shape change
        and is not), which join the previous refresh's in place of the older ones: a start-up T(1)
        that was off, or a machine that got faster, must not keep speculation on where plain
        decoding is faster.
        Costs ~5 plain steps per t1_refresh_every rounds."""
        if self.adaptive and self._rounds_since_t1 >= self._t1_gap:
            return False, 0
        if self._explore_left > 0:
            return False, self._explore_k
        if self._decision is None:
            self._decision = (self.choose_tree(), self.choose())
            self._decode_samples = 0
            if not self._decision[0] and self._start_exploring(self._decision[1]):
                return False, self._explore_k
        return self._decision

    def _start_exploring(self, k: int) -> bool:
        """Whether a neighbour of chain length k is due for re-measurement (see the module
        docstring); if so, the next explore_rounds rounds draft it."""
        if not self.adaptive or self._warming_up():
            return False
        rate = self.expected_rate(k)
        # from plain decoding, the chain the model rates best (on a CPU T(n) need not grow
        # steadily: llama.cpp's repacked kernels take rows in blocks of 4)
        candidates = (k + 1, k - 1) if k > 0 else (
            max(range(1, self.k_max + 1), key=lambda j: self.expected_rate(j) or 0.0),)
        for j in candidates:
            rows = j + 1
            if not 1 <= j <= self.k_max:
                continue
            if self._rounds - self._sampled_at.get(rows, -(1 << 30)) < self._explore_gap.get(rows, self.explore_every):
                continue
            other = self.expected_rate(j)
            if k == 0 and (rate is None or other is None or other < (1.0 - self.explore_margin) * rate):
                continue
            self._explore_k, self._explore_left, self._explore_from = j, self.explore_rounds, k
            return True
        return False

    def choose_tree(self) -> bool:
        """Whether this round drafts a tree (else choose() gives the chain length)."""
        if self.tree_width <= 1 or self.k_max == 0:
            return False
        if not self.adaptive:
            return True
        if self._warming_up():
            return False
        best_chain = max(r for r in map(self.expected_rate, range(self.k_max + 1)) if r is not None)
        if self._tree_rounds < self.warmup_rounds:
            return self.tree_bound() > best_chain
        return self.tree_rate() > best_chain

    def choose(self) -> int:
        """Tokens to draft this round (0: plain decoding)."""
        if not self.adaptive or self.k_max == 0:
            return self.k_max
        if self._n(1) < 2:
            return 0
        if self._warming_up():
            return self.k_max
        rates = [self.expected_rate(k) for k in range(self.k_max + 1)]
        return max(range(self.k_max + 1), key=lambda k: rates[k])

    def _median(self, rows: int) -> float:
        m = self._t_median.get(rows)
        if m is None:
            m = self._t_median[rows] = statistics.median(self._t[rows])
        return m

    def _n(self, rows: int) -> int:
        return len(self._t.get(rows, ()))

    def breakeven_alpha(self) -> Optional[float]:
        """The acceptance (the same at every position) from which some chain beats plain decoding
        at the measured costs: None while a cost is unknown, inf when no acceptance would do."""
        plain, c = self.cost(1), self._c.value
        costs = [self.cost(k + 1) for k in range(1, self.k_max + 1)]
        if plain is None or c is None or None in costs:
            return None

        def gain(a: float) -> float:  # best chain rate / plain rate at acceptance a
            return max(sum(a ** j for j in range(k + 1)) / (t + k * c) for k, t in enumerate(costs, 1)) * plain
        if gain(1.0) <= 1.0:
            return float("inf")
        lo, hi = 0.0, 1.0
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if gain(mid) > 1.0 else (mid, hi)
        return hi

    def probe_due(self) -> bool:
        """Called on plain rounds: True when this one should carry an (unverified) probe draft."""
        self._since_probe += 1
        if self._since_probe < self._probe_gap:  # the shorter of the two gaps
            return False
        self._hopeless_age += 1
        if self._hopeless is None or self._hopeless_age >= self.probe_every:
            breakeven = self.breakeven_alpha()
            self._hopeless = None if breakeven is None else breakeven > self.hopeless_alpha
            self._hopeless_age = 0
        if self._since_probe >= self._budgeted_probe_gap():
            self._since_probe = 0
            return True
        return False

    def plain_steps_to_probe(self) -> int:
        """Plain rounds before the head next drafts, at the current estimates (no side effects):
        the probe_due() calls that would answer False before the one that answers True; 0 while
        decide() only pauses speculation to re-measure T(1), which resumes within a few steps."""
        if self.adaptive and self._rounds_since_t1 >= self._t1_gap:
            return 0
        gap = max(self._probe_gap, self._budgeted_probe_gap())
        return max(gap - self._since_probe - 1, 0)

    def _budgeted_probe_gap(self) -> int:
        """Plain steps between probes: probes within probe_budget (gap >= probe time /
        (probe_budget * T(1))); misses widen the gap up to the cap (hopeless_probe_every where
        hopeless), hits narrow it in either case."""
        t1, c = self.cost(1), self._probe_c.value
        least = 2 if t1 is None or c is None else math.ceil(c / (self.probe_budget * t1))
        return min(max(self._probe_gap, least), self._probe_cap())

    def snapshot(self) -> dict:
        return {"alpha": [round(self.alpha(i), 3) for i in range(self.k_max)],
                "tree_gain": None if self._tree_gain.value is None else round(self._tree_gain.value, 3),
                "tree_draft_ms": None if self._tree_c.value is None else round(1e3 * self._tree_c.value, 3),
                "decode_ms": {n: round(1e3 * self._median(n), 3) for n in sorted(self._t)},
                "draft_step_ms": None if self._c.value is None else round(1e3 * self._c.value, 3)}
