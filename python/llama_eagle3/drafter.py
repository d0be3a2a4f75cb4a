"""The interface every drafter implements ("where a drafter plugs in"; docs/drafters.md).

A drafter proposes tokens that follow the target's context; the engine (engine.py) owns the
target's KV cache and the token loop, rounds.py verifies what was proposed and commits what the
target's own sampler accepts, and the policy (policy.py) decides how many drafts to ask for from
measured costs. Implementations: proposer.Eagle3Proposer (an EAGLE-3 head: chains and trees),
dflash.DFlashDrafter (a DFlash head: a block in one decode), nohead.NoHeadDrafter (no head: the
n-gram copies of ngram.py draft, outside this interface, at no model cost).

Positions and features (the invariant every implementation keeps):
    feature_end   the target position whose features the drafter expects next: while the two
                  are in step, feature_end == the target's n_tokens
    observe()     hands over the target's features of [feature_end, feature_end + m), which
                  moves feature_end by m; features of position p come from the target's decode
                  of its token AT p (for a head that pairs tokens with features, as EAGLE-3 does,
                  the pair for the last position waits for the token after it: propose()'s
                  next_token)
    n_pending     rows observed but not yet in the drafter's own KV: the next proposal's catch-up
    skip(n)       the target decoded n positions without capturing them: the drafter's context
                  restarts after them
    forget(w)     while speculation is off: keep at most the last ~2w pending rows (a probe needs
                  only the recent context)
    truncate(m)   the target keeps positions [0, m); returns how many it may keep (<= m) so that
                  every kept position from the drafter's start on has its features; the engine
                  re-evaluates the rest
    propose()     drafts up to n_max tokens after next_token (the target's token at feature_end,
                  whose features do not exist yet), stopping where the drafter's top-1 probability
                  falls below p_min; returns target vocabulary ids. Anything it wrote past
                  feature_end is speculative and dropped by the next call or by truncate()
Drafts are verified, so a drafter can only change speed, never output.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Drafter(Protocol):
    name: str  # the source in speculative_stats()["drafters"]

    @property
    def feature_end(self) -> int: ...

    @property
    def n_pending(self) -> int: ...

    def reset(self) -> None: ...

    def observe(self, features: np.ndarray, input_ids: np.ndarray) -> None: ...

    def skip(self, n: int) -> None: ...

    def forget(self, window: int) -> None: ...

    def truncate(self, m: int) -> int: ...

    def propose(self, input_ids: np.ndarray, next_token: int, n_max: int, p_min: float) -> list[int]: ...

    def time_step(self, n_steps: int) -> float:
        """Seconds of one drafting step (per proposal where costs.per_proposal), timed at start-up
        (calibration.py); leaves the drafter empty."""
        ...

    def close(self) -> None: ...
