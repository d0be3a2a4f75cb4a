"""How many tokens to draft this round ("where the draft length is chosen").

A round that drafts k tokens commits E(k) tokens on average and costs C(k) (costs.py):

    E(k) = 1 + sum_{j=1..k} prod_{i<=j} alpha_i        alpha_i: P(draft i accepted | drafts < i accepted)
    C(k) = T(k + 1) + k * c + o(k + 1)                   T(n): target decode of n rows, c: one head step,
                                                         o(n): the rest of a round of n verify rows

(a drafter priced per proposal, costs.per_proposal: a DFlash head's block of any length is one head
decode, so C(k) = T(k + 1) + c + o(k + 1) with c measured per proposal)

and the policy drafts argmax_k E(k) / (C(k) + E(k) * u) over 0..k_max (u: the consumer's time per
token); k = 0 is plain decoding. Every input is measured in this process, on this machine and
backend: T(n) from the engine's own decodes (the median of the last 32 of each row count: a
decode stalled by something else must not flip the decision; the first decode after a change of
row count is left out, since llama.cpp rebuilds its graph then; T(1) is re-measured every
t1_refresh_every verify rounds), so that a compute-bound CPU, where T(n) grows
with n, and a bandwidth-bound GPU, where T(n) ~ T(1), each get the right answer; c from the
head's draft calls, o(n) from the wall time of whole rounds, alpha from recent rounds
(acceptance.py: exponentially weighted, so a predictable stretch of text turns speculation on
and a hard one turns it off). Where no chain can pay even at an optimistic bound on the
acceptance (pays_nowhere), the engine hands generation to plain decoding (fallback.py); after
each such stretch, recheck() measures the acceptance afresh with a probe every recheck_gap tokens.

Warm-up: the engine measures T(n) and c at start-up (calibration.py), so that no
generation pays for warm-up rounds; without that, plain rounds run until T(1) is measured,
then k_max until T(k_max + 1) and c are. Rows never measured are interpolated linearly
between measured ones (extrapolated beyond them). While speculation is
off, alpha_1 keeps being measured by probes: the head drafts one token that is not
verified, and the next committed token tells whether it was right (it costs a head decode of
the recent context, not a target row). A hit halves the gap to the next probe, a miss doubles
it (up to `probe_every`): a predictable stretch is noticed within a few tokens, and an
unpredictable one costs one probe per `probe_every` tokens. The gap never falls below
2 tokens, nor below the one at which probes (their time measured) would take more than their
budget of the plain decoding time: `probe_budget`, or, where a chain might pay at the
acceptance's optimistic bound, half the gain it would have there (up to `stake_budget_max`). Where the measured
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
on. From plain decoding (k = 0; T(1) has its own refresh) the chain the model rates best at the
acceptance's optimistic bound (alpha_upper: the last 12 first-position outcomes) is re-measured
(T(n) need not grow steadily), and only while at that bound it beats plain decoding: where
speculation is hopeless (a CPU, a weak head) it is not paid for, and a run of probe hits after
many misses gets verify rounds (which sample every position) within a few probes. The gap starts at explore_every rounds and
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
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from .acceptance import Acceptance, expected_tokens
from .costs import CostTable, Ema


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
    probe_budget: float = 0.02   # least share of the plain decoding time that probes may take ...
    stake_budget_max: float = 0.1  # ... and the most, where a chain might pay (_probe_budget)
    recheck_gap: int = 4         # plain steps between probes while acceptance is measured afresh ...
    recheck_outcomes: int = 8    # ... until the first position has this many outcomes
    graph_rebuilds: bool = False  # offloaded (CUDA graphs): start-up calibration warms each shape up twice
    t1_refresh_every: int = 32   # verify rounds after which speculation pauses to re-measure T(1) (doubling,
                                 # up to explore_every_max, while speculation still wins after one) ...
    t1_refresh_samples: int = 4  # ... with this many kept single-row decodes
    explore_every: int = 32      # rounds after which a neighbouring length's cost is re-measured ...
    explore_every_max: int = 1024  # ... the gap doubling up to this while re-measurements confirm it
    explore_rounds: int = 4      # verify rounds per re-measurement (the first decode, after a shape change, is not kept)
    REDECIDE_EVERY: ClassVar[int] = 16  # single-row decodes (plain steps) after which decide() recomputes
    # rows -> recent decodes in seconds; medians cached until the next sample of that row count
    costs: CostTable = field(default_factory=CostTable)
    _alpha: list[Acceptance] = field(default_factory=list)
    _tree_gain: Ema = field(default_factory=lambda: Ema(0.85))
    _tree_c: Ema = field(default_factory=lambda: Ema(0.9))
    _probe_c: Ema = field(default_factory=lambda: Ema(0.9))
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
    _explore_fresh: list[float] = field(default_factory=list)  # its kept samples so far
    _rechecking: bool = True                     # acceptance outcomes were dropped: probe every recheck_gap

    def __post_init__(self) -> None:
        self._alpha = [Acceptance(self.alpha_decay, self.alpha_fade) for _ in range(self.k_max)]
        self._probe_gap = self.probe_every
        self._t1_gap = self.t1_refresh_every

    # ---- measurements ------------------------------------------------------------------

    def observe_calibration(self, rows: int, seconds: float) -> None:
        """A start-up calibration decode (calibration.py): on an empty context, so faster than the
        same shape mid-generation (on this project's CPU, SmolLM2: T(1) 9.7 ms against 10.9, T(2)
        14.4 against 17.2). It stands until that row count's first sample from a generation,
        which replaces it (costs.py)."""
        self.observe_decode(rows, seconds, provisional=True)

    def observe_decode(self, rows: int, seconds: float, provisional: bool = False) -> None:
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
        if rows > 1 or self._decode_samples >= self.REDECIDE_EVERY or self.costs.n(1) < 2:  # (warm-up)
            self._decision = None
        if switched and self.costs.n(rows) >= 2:
            return
        if rows == 1:  # a plain step: positions past the first go unsampled (probes sample the first)
            for a in self._alpha[1:]:
                a.unsampled()
        refresh = rows == 1 and self._rounds_since_t1 >= self._t1_gap
        if refresh and self._t1_streak == 0:
            # samples from before the verify rounds may be stale: the last t1_refresh_samples stay,
            # so that the new median is of twice as many (4 decodes varied by 10-30% here)
            self.costs.keep_last(1, self.t1_refresh_samples)
        self._sampled_at[rows] = self._rounds
        if self._explore_left > 0 and rows == self._explore_k + 1:  # kept apart until the re-measurement ends
            self._explore_fresh.append(seconds)
            return
        self.costs.add(rows, seconds, provisional)
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
        if len(fresh) >= 2 or (fresh and self.costs.provisional(rows)):
            self.costs.replace(rows, fresh)
        elif fresh:
            self.costs.extend(rows, fresh)
        mine, theirs = self.expected_rate(self._explore_k), self.expected_rate(self._explore_from)
        held = mine is not None and theirs is not None and mine <= theirs
        gap = self._explore_gap.get(rows, self.explore_every)
        self._explore_gap[rows] = min(2 * gap, self.explore_every_max) if held else self.explore_every
        self._explore_k, self._explore_fresh = 0, []

    def observe_calibration_step(self, seconds: float) -> None:
        """A start-up head step (calibration.py): from an empty head context with nothing to catch
        up, about 0.5 ms on this project's CPU against 1.3-1.6 ms per step in generation (per
        proposal with costs.per_proposal). It stands until the first draft of a generation, which
        replaces it."""
        self.costs.add_step(seconds, provisional=True)

    def observe_draft(self, steps: int, seconds: float, asked: int = 0) -> None:
        """A proposal of `steps` drafts took `seconds` (costs.per_proposal: one proposal that asked
        for `asked` drafts, whatever it returned, even none: its block decode ran)."""
        self._decision = None
        if self.costs.per_proposal:
            self.costs.add_step(seconds)
            if asked > 0:
                self.costs.add_proposal(asked, seconds)
        elif steps > 0:
            self.costs.add_step(seconds / steps)

    def observe_overhead(self, rows: int, seconds: float) -> None:
        """A round of `rows` verify rows (1: a plain step) spent `seconds` besides its target
        decode and its drafting (costs.py: o(n))."""
        self.costs.add_overhead(rows, seconds)

    def observe_consumer(self, seconds: float) -> None:
        """The consumer held one token for `seconds` before resuming the generator (costs.py: u)."""
        self.costs.add_consumer(seconds)

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
        self._outcome_seen()

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
        self._outcome_seen()

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
        """T(rows) (costs.py: measured, else interpolated)."""
        return self.costs.t(rows)

    def expected_tokens(self, k: int) -> float:
        """E(k): tokens a chain of k commits per round."""
        return expected_tokens(self.alpha, k)

    def expected_rate(self, k: int, alpha: Optional[float] = None) -> Optional[float]:
        """Tokens per second of a chain of k (0: plain decoding), the whole round priced:
        E(k) / (C(k) + E(k) * u) (costs.py), at the estimated acceptances or, given alpha, at that
        acceptance at every position; None while a cost is unknown."""
        c = self.costs.round_cost(k)
        if c is None:
            return None
        e = self.expected_tokens(k) if alpha is None else expected_tokens(lambda i: alpha, k)
        return e / (c + e * self.costs.consumer)

    def tree_rate(self) -> Optional[float]:
        """E_tree / C_tree in tokens per second, or None before tree rounds were measured."""
        t = self.cost(self.tree_nodes + 1)
        if self._tree_gain.value is None or t is None:
            return None
        e = self._tree_gain.value * self.expected_tokens(self.k_max)
        return e / (t + self._tree_c.value + self.costs.overhead(self.tree_nodes + 1) + e * self.costs.consumer)

    def _warming_up(self) -> bool:
        """T(1) not measured yet: plain rounds; T(k_max + 1) or c not yet: chains of k_max."""
        return self.costs.n(1) < 2 or self.costs.n(self.k_max + 1) < 2 or self.costs.step is None

    def tree_bound(self) -> Optional[float]:
        """The most a tree could commit per second: k_max + 1 tokens every round, drafted no
        slower than a chain of k_max. Trees are not even tried where this loses to a chain."""
        t = self.cost(self.tree_nodes + 1)
        c = self.costs.step
        return None if t is None or c is None else (self.k_max + 1) / (t + self.costs.draft_cost(self.k_max))

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
        # from plain decoding, the chain the model rates best at the acceptance's optimistic bound
        # (on a CPU T(n) need not grow steadily: llama.cpp's repacked kernels take rows in blocks
        # of 4): a low estimate that only probes sample recovers slowly (~20 outcomes deep), while
        # a re-measurement's verify rounds sample every position
        upper = self.alpha_upper()
        candidates = (k + 1, k - 1) if k > 0 else (
            max(range(1, self.k_max + 1), key=lambda j: self.expected_rate(j, upper) or 0.0),)
        for j in candidates:
            rows = j + 1
            if not 1 <= j <= self.k_max:
                continue
            if self._rounds - self._sampled_at.get(rows, -(1 << 30)) < self._explore_gap.get(rows, self.explore_every):
                continue
            other = self.expected_rate(j, upper) if k == 0 else self.expected_rate(j)
            if k == 0 and (rate is None or other is None or other <= rate):
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
        if self.costs.n(1) < 2:
            return 0
        if self._warming_up():
            return self.k_max
        rates = [self.expected_rate(k) for k in range(self.k_max + 1)]
        return max(range(self.k_max + 1), key=lambda k: rates[k])

    def breakeven_alpha(self) -> Optional[float]:
        """The acceptance (the same at every position) from which some chain beats plain decoding
        at the measured costs, whole rounds priced: None while a cost is unknown, inf when no
        acceptance would do."""
        plain = self.expected_rate(0)
        if self.k_max == 0 or plain is None or any(self.costs.round_cost(k) is None for k in range(1, self.k_max + 1)):
            return None

        def gain(a: float) -> float:  # best chain rate / plain rate at acceptance a
            return max(self.expected_rate(k, a) for k in range(1, self.k_max + 1)) / plain
        if gain(1.0) <= 1.0:
            return float("inf")
        lo, hi = 0.0, 1.0
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if gain(mid) > 1.0 else (mid, hi)
        return hi

    def alpha_upper(self) -> float:
        """An optimistic bound on the first position's acceptance (acceptance.Acceptance.upper)."""
        return self._alpha[0].upper()

    def first_outcomes(self) -> int:
        """First-position outcomes (verify rounds and probes) since construction or recheck()."""
        return self._alpha[0].count if self._alpha else 0

    def pays_nowhere(self, min_outcomes: int) -> bool:
        """True when no chain can beat plain decoding even at an optimistic acceptance: drafts
        always right would not pay at the measured costs, or at least min_outcomes first-position
        outcomes put the acceptance's upper bound (alpha_upper) below break-even. Trees
        (tree_width > 1) are a candidate unless even drafts always right would not pay for one.
        The fallback (fallback.py) then hands generation to plain decoding. Costs k_max + 1 rate
        evaluations: no bisection (a chain's rate grows with the acceptance)."""
        if not self.adaptive or self.k_max == 0 or self._warming_up():
            return False
        plain = self.expected_rate(0)
        if plain is None or (self.tree_width > 1 and (self.tree_bound() or 0.0) * self.cost(1) > 1.0):
            return False
        a = self.alpha_upper() if self.first_outcomes() >= min_outcomes else 1.0
        return all((self.expected_rate(k, a) or 0.0) <= plain for k in range(1, self.k_max + 1))

    @property
    def rechecking(self) -> bool:
        """Acceptance is being measured afresh (recheck()) and has too few outcomes yet."""
        return self._rechecking

    def recheck(self) -> None:
        """Acceptance is measured afresh: every outcome is dropped (the text may have changed), and
        probes come every recheck_gap plain steps until the first position has min_outcomes."""
        for a in self._alpha:
            a.forget()
        self._rechecking, self._since_probe, self._decision = True, 0, None

    def probe_due(self) -> bool:
        """Called on plain rounds: True when this one should carry an (unverified) probe draft."""
        self._since_probe += 1
        if self._since_probe < (self.recheck_gap if self._rechecking else self._probe_gap):  # the shorter gap
            return False
        self._hopeless_age += 1
        if self._hopeless is None or self._hopeless_age >= self.probe_every:
            breakeven = self.breakeven_alpha()
            self._hopeless = None if breakeven is None else breakeven > self.hopeless_alpha
            self._hopeless_age = 0
        if self._since_probe >= self._probe_interval():
            self._since_probe = 0
            return True
        return False

    def plain_steps_to_probe(self) -> int:
        """Plain rounds before the head next drafts, at the current estimates (no side effects):
        the probe_due() calls that would answer False before the one that answers True; 0 while
        decide() only pauses speculation to re-measure T(1), which resumes within a few steps."""
        if self.adaptive and self._rounds_since_t1 >= self._t1_gap:
            return 0
        return max(self._probe_interval() - self._since_probe - 1, 0)

    def _probe_interval(self) -> int:
        """Plain steps between probes: recheck_gap while re-checking; else probes within their
        budget (gap >= probe time / (budget * T(1)), _probe_budget()); misses widen the gap up to
        the cap (hopeless_probe_every where hopeless), hits narrow it in either case."""
        if self._rechecking:
            return self.recheck_gap
        t1, c = self.cost(1), self._probe_c.value
        least = 2 if t1 is None or c is None else math.ceil(c / (self._probe_budget() * t1))
        return min(max(self._probe_gap, least), self._probe_cap())

    def _probe_budget(self) -> float:
        """The share of plain decoding time probes may take, sized by what is at stake: half the
        gain the best chain would have at the acceptance's optimistic bound (alpha_upper), between
        probe_budget and stake_budget_max. An estimate that probes alone sample recovers slowly
        (~20 outcomes to move it); where a chain might pay, probes come as often as it could
        repay them."""
        plain = self.expected_rate(0)
        if plain is None or self._warming_up():
            return self.probe_budget
        best = max((self.expected_rate(k, self.alpha_upper()) or 0.0) for k in range(1, self.k_max + 1))
        return min(max(self.probe_budget, 0.5 * (best / plain - 1.0)), self.stake_budget_max)

    def _outcome_seen(self) -> None:
        """A first-position outcome was added: a re-check ends once it has recheck_outcomes."""
        if self._rechecking and self.first_outcomes() >= self.recheck_outcomes:
            self._rechecking = False

    def snapshot(self) -> dict:
        breakeven = self.breakeven_alpha()
        breakeven = None if breakeven is None else round(breakeven, 3) if breakeven != float("inf") else "none pays"
        return {"alpha": [round(self.alpha(i), 3) for i in range(self.k_max)],
                "tree_gain": None if self._tree_gain.value is None else round(self._tree_gain.value, 3),
                "tree_draft_ms": None if self._tree_c.value is None else round(1e3 * self._tree_c.value, 3),
                "alpha_upper": round(self.alpha_upper(), 3) if self.k_max else None, "breakeven_alpha": breakeven, **self.costs.snapshot()}
