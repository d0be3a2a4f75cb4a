"""The feature bookkeeping that every drafter reading target hidden states keeps (proposer.py for
EAGLE-3, dflash.py for DFlash), in step with the target's KV cache:

    head KV     [head_start, head_n)             rows derived from true target features
    pending     f rows of [head_n, feature_end)  target features not yet in the head's KV
    feature_end == the target's n_tokens while the two are in step; positions before head_start
    have no features here, and the head's KV holds no cell while head_n == head_start

A subclass says how its head's KV is emptied (_clear_kv) and how rows are consumed and rolled back.
"""

from __future__ import annotations

import time

import numpy as np


class PendingFeatures:
    head_start: int
    head_n: int
    row_width: int              # floats per feature row
    per_proposal: bool = False  # time_step() times a whole proposal (costs.per_proposal), not a step

    def _clear_kv(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        self.head_start = self.head_n = 0
        self._pending: list[np.ndarray] = []  # blocks of feature rows [m, row width]
        self._n_pending = 0
        self._clear_kv()

    @property
    def feature_end(self) -> int:
        return self.head_n + self._n_pending

    @property
    def n_pending(self) -> int:
        """Feature rows the next proposal consumes before drafting (its catch-up)."""
        return self._n_pending

    def _pending_rows(self) -> np.ndarray:
        rows = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending = [rows]
        return rows

    def _add_pending(self, features: np.ndarray) -> None:
        self._pending.append(features)
        self._n_pending += len(features)

    def forget(self, window: int) -> None:
        """Once 2 * window rows are pending, keeps the last `window` (>= 1), drops older ones and the
        head's KV (so fewer than 2 * window stay pending; most calls do nothing)."""
        if self._n_pending < 2 * window:
            return
        rows = self._pending_rows()[-window:]
        self._restart(self.feature_end - window)
        self._pending, self._n_pending = [rows], window

    def skip(self, n: int) -> None:
        """The target decoded positions [feature_end, feature_end + n) without capturing their
        features: the head's context restarts after them."""
        self._restart(self.feature_end + n)

    def _restart(self, pos: int) -> None:
        """The head's context starts over at pos: no pending rows, an empty head KV."""
        if self.head_n > self.head_start:  # else the head's KV is empty already
            self._clear_kv()
        self.head_start = self.head_n = pos
        self._pending, self._n_pending = [], 0

    def time_step(self, n_steps: int) -> float:
        """Seconds per drafting step (per_proposal: of ONE proposal of n_steps drafts) of a throwaway
        proposal after one zero feature row, timed as the engine times a round's draft (start-up
        calibration); leaves the drafter empty."""
        self.reset()
        self.observe(np.zeros((1, self.row_width), dtype=np.float32), np.zeros(1, dtype=np.int32))
        t0 = time.perf_counter()
        drafted = self.propose(np.zeros(1, dtype=np.int32), 0, n_steps, 0.0)
        seconds = time.perf_counter() - t0
        self.reset()
        return seconds if self.per_proposal else seconds / max(len(drafted), 1)
