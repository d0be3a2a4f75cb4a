"""Chain and tree drafting with the EAGLE-3 head ("where drafts are made").

State, kept in step with the target's KV cache (positions 0..n_tokens-1):

    head KV     [head_start, head_n)             pairs (token[P+1], g[P]) from true target features
    pending     f rows of [head_n, feature_end)  target features not yet in the head's KV
    feature_end == the target's n_tokens while the two are in step
    head_start <= head_n <= feature_end; positions before head_start have no features here,
    and the head's KV holds no cell (not even a draft's) while head_n == head_start

Features stay raw (f, n_taps*Ht) until the head needs them: propose() encodes the pending rows
(g = fc(f)) in one call, so plain steps without a draft and rejected verify rows cost no
head work. Each round the engine calls propose(next_token): the head consumes every pending
pair (the last one pairs g[n-1] with the freshly sampled next_token) in one decode, then
drafts autoregressively, feeding its own pre-norm state forward (propose: a chain;
propose_tree: a tree, see tree.py and HeadRunner::draft_tree). The draft's own KV rows
(positions >= n) are speculative: they are overwritten by the next round, which starts
at head_n = n. After verification the engine hands back the accepted rows' features
with observe().

While the draft policy has speculation off, forget(window) keeps fewer than 2 * `window` pending
rows and empties the head's KV, so the next probe decodes fewer than 2 * `window` pairs instead of
every position since the previous probe, and plain steps far from the next probe are decoded
without capture: skip(n) moves head_start past them and empties the head's KV. Either way the
head's context then starts at head_start > 0 (positions before it were never shown to it;
llama.cpp accepts a sequence that starts anywhere in an empty KV). Drafts are verified, so
this changes speed, never output.
"""

from __future__ import annotations

import time

import numpy as np

from ._native import core
from .pending import PendingFeatures
from .tree import DraftTree


class Eagle3Proposer(PendingFeatures):
    name = "eagle3"  # a round's source in speculative_stats()["drafters"]

    def _clear_kv(self) -> None:
        self.runner.truncate(0)

    def __init__(self, runner: "core.HeadRunner", catch_up_rows: int):
        self.runner = runner
        self.catch_up_rows = catch_up_rows  # pending rows that trigger an eager head decode (long prompts)
        self.reset()

    def observe(self, features: np.ndarray, input_ids: np.ndarray) -> None:
        """Target features f [m, n_taps*Ht] of positions [feature_end, feature_end + m) (kept, not copied:
        the caller hands over a fresh array).

        input_ids: the target's tokens (at least through position feature_end + m - 1)."""
        if len(features) == 0:
            return
        self._add_pending(features)
        if self._n_pending > self.catch_up_rows:
            # every pending pair but the last has its next token in input_ids
            rows = self._pending_rows()
            n = len(rows) - 1
            tokens = input_ids[self.head_n + 1 : self.head_n + 1 + n]
            self.runner.extend(tokens, self.runner.encode(rows[:n]), self.head_n)
            self.head_n += n
            self._pending = [rows[n:]]
            self._n_pending = 1

    def truncate(self, m: int) -> int:
        """The target keeps positions [0, m); returns how many it may keep so that every kept
        position from head_start on has its features here or in the head's KV (<= m)."""
        m = min(m, self.feature_end)
        if m > self.head_n:
            keep = m - self.head_n
            rows = self._pending_rows()[:keep]
            self._pending, self._n_pending = [rows], keep
            return m
        if m <= self.head_start:  # nothing of the head's context stays
            self._restart(m)
            return m
        # the head consumed token m (pair m-1) or later: re-derive position m-1 from the target
        self.head_n = m - 1
        self._pending, self._n_pending = [], 0
        self.runner.truncate(self.head_n)
        return self.head_n

    def _take_pending(self, input_ids: np.ndarray, next_token: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Every pending pair, (tokens [m], g [m, Hd], pos0); the last pairs g[n-1] with next_token."""
        rows = self._pending_rows()
        n = len(rows)
        tokens = np.empty(n, dtype=np.int32)
        tokens[: n - 1] = input_ids[self.head_n + 1 : self.head_n + n]
        tokens[n - 1] = next_token
        pos0 = self.head_n
        self.head_n += n
        self._pending, self._n_pending = [], 0
        return tokens, self.runner.encode(rows), pos0

    def propose(self, input_ids: np.ndarray, next_token: int, n_max: int, p_min: float) -> list[int]:
        """Draft a chain of up to n_max tokens that follow next_token (the target's token at feature_end).

        Requires pending rows (the target evaluated at least one position since the last round)."""
        if self._n_pending == 0 or n_max <= 0:
            return []
        return self.runner.draft(*self._take_pending(input_ids, next_token), n_max, p_min)

    def propose_tree(self, input_ids: np.ndarray, next_token: int, depth: int, width: int,
                     n_nodes: int) -> DraftTree:
        """Draft a tree (tree.py) of at most n_nodes nodes and `depth` levels after next_token."""
        if self._n_pending == 0 or depth <= 0 or n_nodes <= 0:
            return DraftTree([], [], [], [])
        return DraftTree(*self.runner.draft_tree(*self._take_pending(input_ids, next_token), depth, width, n_nodes))

    def time_step(self, n_steps: int) -> float:
        """Seconds per step of a throwaway chain of n_steps drafts from one zero feature row, timed
        as the engine times a round's draft (start-up calibration); leaves the head empty."""
        g = self.runner.encode(np.zeros((1, self.runner.n_embd_enc), dtype=np.float32))
        t0 = time.perf_counter()
        drafted = self.runner.draft(np.zeros(1, dtype=np.int32), g, 0, n_steps, 0.0)
        seconds = (time.perf_counter() - t0) / max(len(drafted), 1)
        self.reset()
        return seconds

    def close(self) -> None:
        self.runner = None  # type: ignore[assignment]  # frees the head's context and model

