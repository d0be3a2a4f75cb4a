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
row count is left out, since llama.cpp rebuilds its graph then, and priced apart as costs.rebuild;
T(1) is re-measured now and then while speculating, decide()), so that a compute-bound CPU, where T(n) grows
with n, and a bandwidth-bound GPU, where T(n) ~ T(1), each get the right answer; c from the
head's draft calls, o(n) from the wall time of whole rounds, alpha from recent rounds
(acceptance.py: exponentially weighted, so a predictable stretch of text turns speculation on
and a hard one turns it off). Where no chain can pay even at an optimistic bound on the
acceptance (pays_nowhere), or the head's verify rounds as run lost to plain decoding, the engine
hands generation to plain decoding (fallback.py); after each such stretch, recheck() measures the acceptance afresh with a probe every recheck_gap tokens.

Warm-up: the engine measures T(n) and c at start-up (calibration.py), so that no
generation pays for warm-up rounds; without that, plain rounds run until T(1) is measured,
then k_max until T(k_max + 1) and c are. Rows never measured are interpolated linearly
between measured ones (extrapolated beyond them). While speculation is off, probes keep
measuring alpha_1 (probes.py); lengths the policy is not drafting have their costs re-measured
now and then, spaced by what that costs (explore.py).

Switching: a change of chain length changes the verify batch's row count, and llama.cpp
rebuilds its compute graph for the new shape (on this project's CPU, SmolLM2: T(2) 23.0 ms on
the first decode after a change against 17.7 steady). Noisy estimates of two lengths whose
rates are within a few percent made auto flip between them round after round and pay that
rebuild each time (simulated bench, acceptance 0.9: auto at 0.94 of the best fixed chain). So
while it drafts, choose() keeps the chain length it chose last unless another beats it by
`switch_margin` (between drafting and plain decoding it takes the better, as before). 1%: a
shape change costs 0.6-2 ms there (costs.rebuild), 2-8% of a round, which a length 1% faster repays
within a few rounds; a 3% margin, with estimates whose noise is itself 2-3%, kept auto for hundreds
of rounds on a chain 6% slower than the best (SmolLM2, simulated acceptance 0.95: 422 of 1118
rounds on chains of 2; 10-prompt A/B at 0.9 / 0.95: 0.956 / 0.963 of the best fixed chain with
1%, 0.947 / 0.946 with 3%).

Trees (tree_width > 1): tree_price.py prices them against the best chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from .acceptance import Acceptance, expected_tokens
from .costs import CostTable
from .explore import Explorer
from .probes import ProbeSchedule
from .tree_price import TreePrice


@dataclass
class DraftPolicy:
    k_max: int
    adaptive: bool = True
    tree_width: int = 1          # > 1: trees of this width are a candidate shape (tree_price.py) ...
    tree_nodes: int = 0          # ... of this node budget
    alpha_prior: float = 0.5
    alpha_decay: float = 0.95    # acceptance estimates weigh about the last 1 / (1 - alpha_decay) outcomes ...
    alpha_fade: float = 0.97     # ... and fade back towards the previous position's by this per unsampled round
    switch_margin: float = 0.01  # another chain length must beat the last one chosen by this (module docstring)
    graph_rebuilds: bool = False  # offloaded (CUDA graphs): start-up calibration warms each shape up twice
    t1_refresh_every: int = 32   # verify rounds after which speculation pauses to re-measure T(1) (while
                                 # speculation still wins after one: doubling, and spaced as explore.py spaces
                                 # re-measurements, up to explorer.explore_every_max) ...
    t1_refresh_samples: int = 4  # ... with this many kept single-row decodes
    REDECIDE_EVERY: ClassVar[int] = 16  # single-row decodes (plain steps) after which decide() recomputes
    costs: CostTable = field(default_factory=CostTable)
    probes: ProbeSchedule = field(default_factory=ProbeSchedule)
    explorer: Explorer = field(default_factory=Explorer)
    _alpha: list[Acceptance] = field(default_factory=list)
    tree: TreePrice = field(default_factory=TreePrice)
    _decision: Optional[tuple[bool, int]] = None  # decide()'s answer until a measurement changes it
    _chosen: Optional[int] = None                # the chain length decide() chose last (switch_margin)
    _decode_samples: int = 0                     # observe_decode calls since it was made
    _last_rows: int = 0                          # row count of the previous target decode
    _rounds_since_t1: int = 0                    # verify rounds since T(1) was last refreshed
    _t1_streak: int = 0                          # T(1) samples kept since the last verify round
    _t1_gap: int = 0                             # verify rounds between refreshes (t1_refresh_every at first)
    _rounds: int = 0                             # observe_decode calls so far (the explore clock)

    def __post_init__(self) -> None:
        self._alpha = [Acceptance(self.alpha_decay, self.alpha_fade) for _ in range(self.k_max)]
        self._t1_gap = self.t1_refresh_every
        self.tree.width, self.tree.nodes = self.tree_width, self.tree_nodes

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
            if not self.costs.provisional(rows):
                self.costs.add_rebuild(rows, seconds)
            return
        if rows == 1:  # a plain step: positions past the first go unsampled (probes sample the first)
            for a in self._alpha[1:]:
                a.unsampled()
        refresh = rows == 1 and self._rounds_since_t1 >= self._t1_gap
        if refresh and self._t1_streak == 0:
            # samples from before the verify rounds may be stale: the last t1_refresh_samples stay,
            # so that the new median is of twice as many (4 decodes varied by 10-30% here)
            self.costs.keep_last(1, self.t1_refresh_samples)
        self.explorer.sampled(rows, self._rounds)
        if self.explorer.keep_apart(rows, seconds):
            return
        self.costs.add(rows, seconds, provisional)
        if rows == 1:
            self._t1_streak += 1
        if refresh and self._t1_streak >= self.t1_refresh_samples:
            # speculation still beats plain decoding: the next refresh can wait twice as long
            k = self.choose()
            if k > 0:  # spaced as re-measurements are (explore.py: budget)
                spaced = self.explorer.budget_gap(self, k, self.detour_loss(k, 0, self.t1_refresh_samples + 1))
                self._t1_gap = min(max(2 * self._t1_gap, spaced), self.explorer.explore_every_max)
            else:
                self._t1_gap = self.t1_refresh_every
            self._rounds_since_t1, self._decision = 0, None

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
        self.explorer.round_done(self)

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
        self.tree.observe(committed, self.expected_tokens(self.k_max), draft_seconds)

    def observe_probe(self, hit: bool, seconds: float) -> None:
        """A probe (its head time: seconds) drafted the committed token (hit) or not."""
        self._decision = None
        self._alpha[0].add(float(hit))
        for a in self._alpha[1:]:
            a.unsampled()
        self.probes.observe(hit, seconds)
        self._outcome_seen()

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

    def detour_loss(self, k: int, j: int, rounds: int) -> Optional[float]:
        """Seconds that `rounds` rounds of chain length j (0: plain steps) lose against as many
        tokens at chain length k's rate, at the estimated acceptance, the two shape changes
        included (costs.rebuild); None while a cost is unknown."""
        rate, c = self.expected_rate(k), self.costs.round_cost(j)
        if not rate or c is None:
            return None
        e = self.expected_tokens(j)
        return rounds * max(c + e * self.costs.consumer - e / rate, 0.0) + 2 * self.costs.rebuild

    def _warming_up(self) -> bool:
        """T(1) not measured yet: plain rounds; T(k_max + 1) or c not yet: chains of k_max."""
        return self.costs.n(1) < 2 or self.costs.n(self.k_max + 1) < 2 or self.costs.step is None

    def decide(self) -> tuple[bool, int]:
        """(draft a tree?, chain length) for this round: choose_tree() and choose(), recomputed
        after any measurement but T(1)'s and every REDECIDE_EVERY plain steps (T(1) drifts
        slowly; a plain step then costs no decision). After t1_refresh_every verify rounds, and
        then after gaps that double while speculation still wins after a refresh and are at least
        what spends explorer.budget of the time on refreshes (explore.py), plain steps until
        t1_refresh_samples T(1) samples are kept (the first step follows a shape change and is
        not), which join the previous refresh's in place of the older ones: a start-up T(1) that
        was off, or a machine that got faster, must not keep speculation on where plain decoding
        is faster. A refresh costs ~5 plain steps."""
        if self.adaptive and self._rounds_since_t1 >= self._t1_gap:
            return False, 0
        if self.explorer.left > 0:
            return False, self.explorer.k
        if self._decision is None:
            self._decision = (self.choose_tree(), self.choose())
            self._decode_samples = 0
            if not self._decision[0]:
                self._chosen = self._decision[1]
                if self.adaptive and not self._warming_up() and self.explorer.start(self, self._chosen, self._rounds):
                    return False, self.explorer.k
        return self._decision

    def choose_tree(self) -> bool:
        """Whether this round drafts a tree (else choose() gives the chain length)."""
        if self.tree_width <= 1 or self.k_max == 0:
            return False
        if not self.adaptive:
            return True
        if self._warming_up():
            return False
        return self.tree.beats(self, max(r for r in map(self.expected_rate, range(self.k_max + 1)) if r is not None))

    def choose(self) -> int:
        """Tokens to draft this round (0: plain decoding)."""
        if not self.adaptive or self.k_max == 0:
            return self.k_max
        if self.costs.n(1) < 2:
            return 0
        if self._warming_up():
            return self.k_max
        rates = [self.expected_rate(k) for k in range(self.k_max + 1)]
        best = max(range(self.k_max + 1), key=lambda k: rates[k] or 0.0)
        last = self._chosen  # (switch_margin between chain lengths; plain decoding has none)
        if best > 0 and last and last <= self.k_max and rates[last] and rates[best] < rates[last] * (1 + self.switch_margin):
            return last
        return best

    def breakeven_alpha(self) -> Optional[float]:
        """The acceptance (the same at every position) from which some chain beats plain decoding
        at the measured costs, whole rounds priced: None while a cost is unknown, inf when no
        acceptance would do."""
        if self.k_max == 0 or self.gain_at(1.0) is None:
            return None
        if self.gain_at(1.0) <= 1.0:
            return float("inf")
        lo, hi = 0.0, 1.0
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self.gain_at(mid) > 1.0 else (mid, hi)
        return hi

    def gain_at(self, alpha: float) -> Optional[float]:
        """The best chain's rate over plain decoding's at acceptance alpha at every position; None
        while a cost is unknown."""
        plain = self.expected_rate(0)
        rates = [self.expected_rate(k, alpha) for k in range(1, self.k_max + 1)]
        if plain is None or not rates or any(r is None for r in rates):
            return None
        return max(rates) / plain

    def gain_at_upper(self) -> Optional[float]:
        """gain_at(alpha_upper()); None while warming up (probes.py sizes its budget by it)."""
        return None if self._warming_up() else self.gain_at(self.alpha_upper())

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
        if plain is None or (self.tree_width > 1 and (self.tree.bound(self) or 0.0) * self.cost(1) > 1.0):
            return False
        a = self.alpha_upper() if self.first_outcomes() >= min_outcomes else 1.0
        return all((self.expected_rate(k, a) or 0.0) <= plain for k in range(1, self.k_max + 1))

    @property
    def recheck_outcomes(self) -> int:
        return self.probes.recheck_outcomes

    @property
    def rechecking(self) -> bool:
        """Acceptance is being measured afresh (recheck()) and has too few outcomes yet."""
        return self.probes.rechecking

    def recheck(self) -> None:
        """Acceptance is measured afresh: every outcome is dropped (the text may have changed), and
        probes come every recheck_gap plain steps until the first position has recheck_outcomes."""
        for a in self._alpha:
            a.forget()
        self.probes.recheck()
        self._decision = None

    def probe_due(self) -> bool:
        """Called on plain rounds: True when this one should carry an (unverified) probe draft."""
        return self.probes.due(self)

    def plain_steps_to_probe(self) -> int:
        """Plain rounds before the drafter next drafts, at the current estimates (no side effects);
        0 while decide() only pauses speculation to re-measure T(1), which resumes within a few steps."""
        if self.adaptive and self._rounds_since_t1 >= self._t1_gap:
            return 0
        return self.probes.steps_to_next(self)

    def _outcome_seen(self) -> None:
        self.probes.outcome_seen(self.first_outcomes())

    def snapshot(self) -> dict:
        breakeven = self.breakeven_alpha()
        breakeven = None if breakeven is None else round(breakeven, 3) if breakeven != float("inf") else "none pays"
        return {"alpha": [round(self.alpha(i), 3) for i in range(self.k_max)],
                **self.tree.snapshot(),
                "alpha_upper": round(self.alpha_upper(), 3) if self.k_max else None, "breakeven_alpha": breakeven, **self.costs.snapshot()}
