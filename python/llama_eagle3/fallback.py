"""Plain decoding that costs what plain llama-cpp-python costs, where speculation cannot pay.

Where the measured costs say no chain can beat plain decoding at any acceptance, or the
first draft position's acceptance, measured afresh, has an optimistic bound below break-even
(DraftPolicy.pays_nowhere), the engine hands generation to a lean token loop for a stretch of
`stretch` tokens: llama-cpp-python's own eval and the same sampler, no hidden-state capture
(llama.cpp's extraction switched off, the hook idle), no probes, no policy, no drafter
bookkeeping per token (engine.Engine.plain_stretch). The stretch spans generations. After it the
policy re-checks (DraftPolicy.recheck: fresh acceptance outcomes, a probe every few tokens);
if speculation still cannot pay, the next stretch is twice as long (up to max_stretch), else
normal rounds resume and the next stretch starts at first_stretch again.

The verdict also reads what the head's verify rounds achieved (RealizedRounds): the cost model
prices a round from medians of steady shapes, so what it leaves out (the head's catch-up and the
graph rebuilds where speculation starts after plain steps, an acceptance estimate lifted by a few
lucky outcomes) shows up only in the rounds' wall time. Where `window` verify rounds in a row,
whole (drafting, decode, sampling, bookkeeping), took longer than plain decoding would have for
the tokens they committed, by more than twice their standard error, speculation is not paying
whatever the model predicts: a stretch begins. Measured on this project's CPU (SmolLM2, the
shipped head, held-out prompts, 2026-12-03): verify rounds the model rated above break-even
committed a token per 11.2 ms against plain decoding's 8.7.

Cost on this project's CPU (SmolLM2-135M, the shipped head, first-position acceptance ~0.35):
a re-check is ~8 probes over ~32 captured plain steps, about 3 tokens' worth of time, once per
1024 to 16384 tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .policy import DraftPolicy


@dataclass
class RealizedRounds:
    """The head's recent chain verify rounds as run (rounds.chain_round; a tree's rounds are
    priced by their measured gain, tree_price.py): tokens committed and wall seconds, judged
    against plain decoding's measured time per token once per `window` rounds (module docstring)."""
    window: int = 32   # rounds judged together, in windows that do not overlap ...
    z: float = 2.0     # ... losing by more than z standard errors of their mean excess
    # (judged after every round, a sliding window of 16 at z = 1 would have tripped on chains that
    # gain 5-8% with its acceptance's spread: ~9% of windows of the llama-8b shape's chain of 3 at
    # acceptance 0.5, modelled; one window of 32 at z = 2: ~1.4%; rounds losing 28%: every window)
    _rounds: list = field(default_factory=list)

    def add(self, tokens: int, seconds: float) -> None:
        self._rounds.append((tokens, seconds))

    def reset(self) -> None:
        self._rounds.clear()

    def lose(self, plain_seconds: float) -> bool:
        """Once `window` rounds ran since the last verdict: whether they took longer than
        plain_seconds per committed token would have (then the window starts afresh)."""
        n = len(self._rounds)
        if n < self.window:
            return False
        excess = [s - t * plain_seconds for t, s in self._rounds]  # seconds lost per round
        self._rounds.clear()
        mean = sum(excess) / n
        spread = math.sqrt(sum((x - mean) ** 2 for x in excess) / (n - 1))
        return mean > self.z * spread / math.sqrt(n)


@dataclass
class Fallback:
    first_stretch: int = 1024
    max_stretch: int = 16384
    stretch: int = 0       # the length of the next stretch (first_stretch at first)
    left: int = 0          # tokens left in the current stretch; 0: rounds run as usual
    stretches: int = 0     # stretches begun so far
    tokens: int = 0        # tokens generated inside stretches
    _after_stretch: bool = False  # a stretch ended and its re-check has not concluded
    realized: RealizedRounds = field(default_factory=RealizedRounds)

    def __post_init__(self) -> None:
        self.stretch = self.stretch or self.first_stretch

    @property
    def active(self) -> bool:
        return self.left > 0

    def consider(self, policy: DraftPolicy) -> None:
        """After a round with an acceptance outcome: begins a stretch if speculation cannot pay
        (policy.pays_nowhere) or the head's recent verify rounds lost to plain decoding
        (RealizedRounds). A re-check that concluded otherwise makes the next stretch short."""
        if self.left > 0:
            return
        plain = policy.costs.round_cost(0)
        if policy.pays_nowhere(policy.recheck_outcomes) or (plain is not None and self.realized.lose(plain)):
            self.realized.reset()
            self.left = self.stretch
            self.stretch = min(2 * self.stretch, self.max_stretch)
            self.stretches += 1
            self._after_stretch = False
        elif self._after_stretch and not policy.rechecking:
            self.stretch, self._after_stretch = self.first_stretch, False

    def step(self, policy: DraftPolicy) -> None:
        """One token of the current stretch; after its last one the policy re-checks."""
        self.tokens += 1
        self.left -= 1
        if self.left == 0:
            policy.recheck()
            self._after_stretch = True

    def snapshot(self) -> dict:
        return {"fallback_stretches": self.stretches, "fallback_tokens": self.tokens,
                "fallback_tokens_left": self.left}
