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

Cost on this project's CPU (SmolLM2-135M, the shipped head, first-position acceptance ~0.35):
a re-check is ~8 probes over ~32 captured plain steps, about 3 tokens' worth of time, once per
1024 to 16384 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from .policy import DraftPolicy


@dataclass
class Fallback:
    first_stretch: int = 1024
    max_stretch: int = 16384
    stretch: int = 0       # the length of the next stretch (first_stretch at first)
    left: int = 0          # tokens left in the current stretch; 0: rounds run as usual
    stretches: int = 0     # stretches begun so far
    tokens: int = 0        # tokens generated inside stretches
    _after_stretch: bool = False  # a stretch ended and its re-check has not concluded

    def __post_init__(self) -> None:
        self.stretch = self.stretch or self.first_stretch

    @property
    def active(self) -> bool:
        return self.left > 0

    def consider(self, policy: DraftPolicy) -> None:
        """After a round with an acceptance outcome: begins a stretch if speculation cannot pay
        (policy.pays_nowhere). A re-check that concluded otherwise makes the next stretch short."""
        if self.left > 0:
            return
        if policy.pays_nowhere(policy.recheck_outcomes):
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
