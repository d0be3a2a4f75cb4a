"""How many tokens to draft this round ("where the draft length is chosen").

A round that drafts k tokens commits E(k) tokens on average and costs C(k):

    E(k) = 1 + sum_{j=1..k} prod_{i<=j} alpha_i        alpha_i: P(draft i accepted | drafts < i accepted)
    C(k) = T(k + 1) + k * c                              T(n): target decode of n rows, c: one head step

and the policy drafts argmax_k E(k) / C(k) over 0..k_max; k = 0 is plain decoding. All
three inputs are measured in this process, on this machine and backend: T(n) from the
engine's own decodes (the median of the last 32 of each row count: a decode stalled by
something else must not flip the decision; offloaded, the first decode after a change of row
count is left out, since a GPU backend rebuilds its graph then; T(1) is re-measured every
t1_refresh_every verify rounds), so that a compute-bound CPU, where T(n) grows
with n, and a bandwidth-bound GPU, where T(n) ~ T(1), each get the right answer; c from the
head's draft calls, alpha from recent rounds (exponential moving averages, so a predictable
stretch of text turns speculation on and a hard one turns it off).

Warm-up: the engine measures T(n) and c at start-up (Llama._calibrate), so that no
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
    probe_budget: float = 0.02   # most of the plain decoding time that probes may take
    graph_rebuilds: bool = False  # the backend rebuilds its graph when the row count changes (offloaded)
    t1_refresh_every: int = 128  # verify rounds after which speculation pauses to re-measure T(1) ...
    t1_refresh_samples: int = 4  # ... with this many kept single-row decodes
    REDECIDE_EVERY: ClassVar[int] = 16  # single-row decodes (plain steps) after which decide() recomputes
    # rows -> recent decodes: T(1) in seconds, T(n > 1) over the T(1) of the time (or seconds
    # while T(1) is unknown: _raw); medians cached until the next sample of that row count
    _t: dict[int, deque] = field(default_factory=dict)
    _raw: dict[int, deque] = field(default_factory=dict)
    _t_median: dict[int, float] = field(default_factory=dict)
    _c: _Ema = field(default_factory=lambda: _Ema(0.9))
    _alpha: list[_Ema] = field(default_factory=list)
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
    _t1_before: float = 0.0                      # T(1) when the current refresh began

    def __post_init__(self) -> None:
        self._alpha = [_Ema(0.85) for _ in range(self.k_max)]
        self._probe_gap = self.probe_every

    # ---- measurements ------------------------------------------------------------------

    def observe_decode(self, rows: int, seconds: float) -> None:
        """A target decode of `rows` rows (last token + drafts). With graph_rebuilds, the first
        decode after a change of row count is not kept once that count has 2 samples: the
        backend rebuilt its graph for the new shape (CUDA graphs), which neither shape pays
        while it runs steadily."""
        switched, self._last_rows = rows != self._last_rows, rows
        self._decode_samples += 1
        if rows > 1 or self._decode_samples >= self.REDECIDE_EVERY or self._n(1) < 2:  # (warm-up)
            self._decision = None
        if self.graph_rebuilds and switched and self._n(rows) >= 2:
            return
        refresh = rows == 1 and self._rounds_since_t1 >= self.t1_refresh_every
        if refresh and self._t1_streak == 0:  # samples from before the verify rounds are stale
            self._t1_before = self._median(1) if 1 in self._t else 0.0
            self._t.pop(1, None)
            self._t_median.pop(1, None)
        t1 = self._median(1) if rows > 1 and 1 in self._t else None
        if rows > 1 and t1 is None:
            self._raw.setdefault(rows, deque(maxlen=32)).append(seconds)
            return
        self._t.setdefault(rows, deque(maxlen=32)).append(seconds if t1 is None else seconds / t1)
        self._t_median.pop(rows, None)
        if rows == 1:
            self._t1_streak += 1
        if refresh and self._t1_streak >= self.t1_refresh_samples:
            if self._t1_before:
                self._rescale(self._t1_before / self._median(1))
            self._rounds_since_t1, self._decision = 0, None

    def _rescale(self, factor: float) -> None:
        """T(n > 1) ratios were taken against the T(1) a refresh replaced: their seconds were
        measured right, the T(1) they were divided by may not have been."""
        for n in [n for n in self._t if n > 1]:
            self._t[n] = deque((r * factor for r in self._t[n]), maxlen=32)
            self._t_median.pop(n, None)

    def observe_draft(self, steps: int, seconds: float) -> None:
        self._decision = None
        if steps > 0:
            self._c.add(seconds / steps)

    def _verified(self) -> None:
        """A verify round (chain or tree) ran: the decision is remade and T(1)'s refresh clock ticks."""
        self._decision = None
        self._rounds_since_t1, self._t1_streak = self._rounds_since_t1 + 1, 0

    def observe_round(self, drafted: int, accepted: int) -> None:
        """Draft positions 1..drafted were verified; the first `accepted` matched."""
        self._verified()
        for i in range(min(drafted, accepted + 1, self.k_max)):
            self._alpha[i].add(1.0 if i < accepted else 0.0)

    def observe_tree(self, committed: int, draft_seconds: float) -> None:
        """A tree round committed `committed` tokens (bonus included); drafting took draft_seconds."""
        self._verified()
        self._tree_rounds += 1
        self._tree_gain.add(committed / self.expected_tokens(self.k_max))
        self._tree_c.add(draft_seconds)

    def observe_probe(self, hit: bool, seconds: float) -> None:
        """A probe (its head time: seconds) drafted the committed token (hit) or not."""
        self._decision = None
        self._alpha[0].add(1.0 if hit else 0.0)
        self._probe_c.add(seconds)
        self._probe_gap = max(2, self._probe_gap // 2) if hit else min(2 * self._probe_gap, self._probe_cap())

    def _probe_cap(self) -> int:
        return self.hopeless_probe_every if self._hopeless else self.probe_every

    # ---- decisions -------------------------------------------------------------------

    def alpha(self, i: int) -> float:
        """Estimated alpha_{i+1}; a position not measured yet is assumed as good as the one before
        it, so that drafting deeper gets tried (and measured) when the first positions do well."""
        a = self._alpha[i]
        if a.value is not None:
            return a.value
        return self.alpha(i - 1) if i > 0 else self.alpha_prior

    def cost(self, rows: int) -> Optional[float]:
        """T(rows): measured, else interpolated/extrapolated linearly from measured rows. T(n > 1)
        is measured relative to T(1) and scaled by today's T(1): as the context grows, every row
        count gets slower together (measured here on SmolLM2: T(5)/T(1) 3.5 at 0 cells, 3.0
        at 512), while T(n > 1) itself is only sampled when speculation is on."""
        if rows in self._t or rows in self._raw:
            return self._measured(rows)
        known = sorted((n, self._measured(n)) for n in {*self._t, *self._raw})
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
        slowly; a plain step then costs no decision). Every t1_refresh_every verify rounds, plain
        steps until t1_refresh_samples T(1) samples are kept (offloaded, the first step follows a
        shape change and is not), which replace the older ones: a start-up T(1) that was off, or a
        machine that got faster, must not keep speculation on where plain decoding is faster.
        Costs ~5 plain steps per t1_refresh_every rounds."""
        if self.adaptive and self._rounds_since_t1 >= self.t1_refresh_every:
            return False, 0
        if self._decision is None:
            self._decision = (self.choose_tree(), self.choose())
            self._decode_samples = 0
        return self._decision

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

    def _measured(self, rows: int) -> float:
        if rows in self._t:
            return self._median(rows) * (self._median(1) if rows > 1 else 1.0)
        return statistics.median(self._raw[rows])

    def _n(self, rows: int) -> int:
        return len(self._t.get(rows, ())) + len(self._raw.get(rows, ()))

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
        # probes within probe_budget: gap >= probe time / (probe_budget * T(1)); misses widen the
        # gap up to the cap (hopeless_probe_every where hopeless), hits narrow it in either case
        t1, c = self.cost(1), self._probe_c.value
        least = 2 if t1 is None or c is None else math.ceil(c / (self.probe_budget * t1))
        gap = min(max(self._probe_gap, least), self._probe_cap())
        if self._since_probe >= gap:
            self._since_probe = 0
            return True
        return False

    def plain_steps_to_probe(self) -> int:
        """Plain rounds before the head next drafts, at the current estimates (no side effects):
        the probe_due() calls that would answer False before the one that answers True; 0 while
        decide() only pauses speculation to re-measure T(1), which resumes within a few steps."""
        if self.adaptive and self._rounds_since_t1 >= self.t1_refresh_every:
            return 0
        t1, c = self.cost(1), self._probe_c.value
        least = 2 if t1 is None or c is None else math.ceil(c / (self.probe_budget * t1))
        gap = max(self._probe_gap, min(max(self._probe_gap, least), self._probe_cap()))
        return max(gap - self._since_probe - 1, 0)

    def snapshot(self) -> dict:
        return {"alpha": [round(self.alpha(i), 3) for i in range(self.k_max)],
                "tree_gain": None if self._tree_gain.value is None else round(self._tree_gain.value, 3),
                "tree_draft_ms": None if self._tree_c.value is None else round(1e3 * self._tree_c.value, 3),
                "decode_ms": {n: round(1e3 * self._measured(n), 3) for n in sorted({*self._t, *self._raw})},
                "draft_step_ms": None if self._c.value is None else round(1e3 * self._c.value, 3)}
