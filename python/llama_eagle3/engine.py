"""The speculative engine: KV ownership, rounds and the token loop ("where rounds run").

The engine owns the target's KV state through the llama_cpp.Llama it serves (llm). It keeps
llama-cpp-python's invariant (the target KV holds exactly input_ids[:n_tokens]) and the
drafter's (features of every target position from the drafter's start on are in its KV or
pending; see proposer.py). A plain step (K = 0) more than OFF_WINDOW positions before the next
probe is decoded without capture, and the drafter's start moves past it (skip). A round:

    pending  = tokens to evaluate, [t_n] in steady state (t_n: the last sampled token)
    drafts   = drafter.propose(t_n)                          # d_1..d_K, K may be 0
    decode   [t_n, d_1..d_K] at positions n..n+K             # ONE target decode, logits on every row
    commit   accept_chain(sample row i, drafts)              # y_0..y_a, a drafts accepted
    rollback target KV to n+a+1; hand features of n..n+a to the drafter
    yield    y_0..y_a, each with n_tokens set to its own position as plain decoding would have
             it (accepted tokens after it wait in the KV past n_tokens); next round evaluates [y_a]

A tree round (tree_round.py) drafts, verifies and keeps a tree's accepted path instead. Where
speculation cannot pay (fallback.py), plain_stretch() runs llama-cpp-python's own token loop
with nothing captured. Everything that changes the KV goes through methods that keep both
invariants.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable, Generator, Optional, Sequence

import numpy as np

from ._native import llama_cpp
from .capture import FeatureCapture
from .drafter import Drafter
from .fallback import Fallback
from .policy import DraftPolicy
from .ngram import NgramDrafter
from .stats import SpeculativeStats
from .rounds import chain_round, ngram_round
from .verifier import SimulatedAcceptance

from llama_cpp.llama import StoppingCriteriaList

if TYPE_CHECKING:
    from .llama import Llama


class Engine:
    def __init__(self, llm: "Llama", drafter: Drafter, capture: FeatureCapture, policy: DraftPolicy,
                 draft_max: int, p_min: float, tree_width: int, tree_nodes: int, ngram_max: int = 0):
        self.llm, self.drafter, self.capture, self.policy = llm, drafter, capture, policy
        self.draft_max, self.p_min, self.tree_width, self.tree_nodes = draft_max, p_min, tree_width, tree_nodes
        self.stats = SpeculativeStats()
        self.ngram: Optional[NgramDrafter] = NgramDrafter(ngram_max) if ngram_max > 0 else None
        # without a head (draft_max 0: nohead.py) nothing but n-gram copies can draft: the plain
        # fallback's loop, which verifies those where they pay, runs for good
        self.fallback = Fallback() if draft_max > 0 else Fallback(first_stretch=1 << 62, left=1 << 62)
        self.simulated: Optional[SimulatedAcceptance] = None  # benchmark only (Llama._bench_configure)
        self.lock = threading.Lock()  # rounds and state changes of one generation at a time
        self.generation: Optional[object] = None
        self.tree_batch: Optional[object] = None  # a llama_cpp LlamaBatch of tree_nodes + 1 rows (tree_width > 1)

    # ---- KV state -------------------------------------------------------------------

    @property
    def ctx_limit(self) -> int:
        """Positions llama-cpp-python tracks: llama.cpp may pad n_ctx beyond the input_ids array."""
        return min(self.llm._n_ctx, len(self.llm.input_ids))

    def forget_from(self, pos: int) -> None:
        """Removes every sequence's target KV cells at positions >= pos (llama-cpp-python's
        kv_cache_seq_rm reads seq_id -1 as 0, so the llama.cpp call is made directly)."""
        llama_cpp.llama_memory_seq_rm(self.llm._ctx.memory, -1, pos, -1)

    def truncate(self, m: int) -> int:
        """Keeps target positions [0, keep) with keep <= m chosen so both invariants hold."""
        llm = self.llm
        keep = self.drafter.truncate(m)
        if self.ngram is not None:
            self.ngram.truncate(keep)
        if keep < llm.n_tokens:
            self.forget_from(keep)
        llm.n_tokens = keep
        llm._requires_eval = True
        return keep

    def resync(self) -> list[int]:
        """Drops target positions whose features the drafter lacks; returns them for re-evaluation."""
        old = self.llm.n_tokens
        keep = self.truncate(old)
        return [int(t) for t in self.llm.input_ids[keep:old]]

    def decode(self, tokens: Sequence[int], n_logits: int, capture: bool = True) -> None:
        """Evaluates tokens at n_tokens.. (n_batch chunks) with logits on the last n_logits rows
        (all rows with logits_all) and hands their features to the drafter (capture=False: has it
        skip them). Callers first bring the drafter in step with n_tokens (truncate / resync)."""
        llm = self.llm
        self.forget_from(llm.n_tokens)
        n_total = len(tokens)
        for i in range(0, n_total, llm.n_batch):
            chunk = tokens[i : min(n_total, i + llm.n_batch)]
            n_past, n = llm.n_tokens, len(chunk)
            features = self.capture.decode(llm, chunk, n_past, n_total - n_logits - i, capture)
            llm.input_ids[n_past : n_past + n] = chunk
            if llm._logits_all:
                logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n * llm._n_vocab,))
                llm.scores[n_past : n_past + n, :].reshape(-1)[::] = logits
            llm.n_tokens += n
            llm._requires_eval = False
            if n_past + n <= self.ctx_limit:
                # past the limit llama-cpp-python stops tracking tokens; the drafter falls behind
                # (no drafting there) and prefix reuse re-evaluates what it lacks
                if features is None:
                    self.drafter.skip(n)
                else:
                    self.drafter.observe(features, llm.input_ids)

    def reuse_prefix(self, tokens: list[int], reset: bool) -> list[int]:
        """Prompt tokens still to evaluate after reusing the cached prefix (at least one)."""
        llm = self.llm
        if reset and llm.n_tokens > 0:
            longest = 0
            for a, b in zip(llm._input_ids, tokens):
                if a != b:
                    break
                longest += 1
            want = longest - 1 if longest == len(tokens) else longest  # re-evaluate >= 1 token
            keep = self.truncate(want) if want > 0 else 0
            if keep > 0:
                return tokens[keep:]
        if reset or llm.n_tokens == 0:
            llm.reset()
            return tokens
        return self.resync() + tokens

    # ---- the token loop -------------------------------------------------------------

    def generate(self, tokens: Sequence[int], reset: bool, stopping_criteria: Optional[StoppingCriteriaList],
                 start_sampler: Callable[[], None]) -> Generator[int, Optional[Sequence[int]], None]:
        """llama_cpp.Llama.generate's contract; start_sampler sets up llm._sampler for this
        generation (under the lock, with the generation's start)."""
        t0 = time.perf_counter()
        generation = object()
        with self.lock:
            self.generation = generation  # a generation started later supersedes this one
            start_sampler()
            pending = self.reuse_prefix(list(tokens), reset)
        self.stats.generate_seconds += time.perf_counter() - t0
        while True:
            if self.fallback.active:
                pending = yield from self.plain_stretch(pending, stopping_criteria, generation)
            else:
                t0 = time.perf_counter()
                with self.lock:
                    self.check_current(generation)
                    committed, first_pos = chain_round(self, pending)
                self.stats.generate_seconds += time.perf_counter() - t0
                pending = yield from self.emit(committed, first_pos, stopping_criteria, generation)
            if pending is None:
                return

    def emit(self, committed: list[int], first_pos: int, stopping_criteria: Optional[StoppingCriteriaList],
             generation: object) -> Generator[int, Optional[Sequence[int]], Optional[list[int]]]:
        """Yields a round's committed tokens (the first produced by the logits of first_pos) as plain
        decoding would; returns the tokens the next round evaluates, None when generation stops."""
        llm = self.llm
        for i, token in enumerate(committed):
            pos = first_pos + i
            with self.lock:
                self.check_current(generation)
                # plain decoding's state while this token is out: everything before it evaluated.
                # Accepted tokens after it stay in the KV; a caller that stops here leaves them
                # past n_tokens, where the next decode drops them.
                llm.n_tokens = pos + 1
                stop = stopping_criteria is not None and stopping_criteria(
                    llm.input_ids[: pos + 1], llm.scores[pos] if llm._logits_all else llm.scores[0])
            if stop:
                return None
            t_yield = time.perf_counter()
            sent = yield token
            self.policy.observe_consumer(time.perf_counter() - t_yield)
            if sent is not None:
                # the caller appended tokens: continue from token, dropping later commits
                with self.lock:
                    self.check_current(generation)
                    keep = self.truncate(pos + 1)
                return [*(int(t) for t in llm.input_ids[keep : pos + 1]), token, *sent]
        return [committed[-1]]

    def plain_stretch(self, pending: list[int], stopping_criteria: Optional[StoppingCriteriaList],
                      generation: object) -> Generator[int, Optional[Sequence[int]], Optional[list[int]]]:
        """Plain decoding while the fallback is active: llama_cpp.Llama's eval and the generation's
        sampler, token by token as llama-cpp-python's own loop runs them, nothing captured; only
        an n-gram draft whose measured acceptance pays for its rows (ngram.py) is verified, in a
        round without capture. Returns the tokens to evaluate next once the stretch ends, None
        when generation stops. However it ends (a stop, the caller closing the stream), the
        drafter restarts after the positions decoded here."""
        llm, fallback = self.llm, self.fallback
        self.capture.suspend()
        try:
            while fallback.active:
                with self.lock:
                    self.check_current(generation)
                    copied = ngram_round(self, pending, capture=False) if len(pending) == 1 else None
                    if copied is None:
                        llama_cpp.Llama.eval(llm, pending)
                        token = llm._sampler.sample(llm._ctx, -1)
                        fallback.step(self.policy)
                        self.stats.fallback_steps += 1
                        pos = llm.n_tokens - 1
                        stop = stopping_criteria is not None and stopping_criteria(
                            llm.input_ids[: pos + 1], llm.scores[pos] if llm._logits_all else llm.scores[0])
                if copied is not None:
                    pending = yield from self.emit(*copied, stopping_criteria, generation)
                    if pending is None:
                        return None
                    continue
                if stop:
                    return None
                sent = yield token
                pending = [token] if sent is None else [token, *sent]
            return pending
        finally:
            self.capture.resume()
            self.sync_drafter()

    def sync_drafter(self) -> None:
        """The drafter's context restarts after positions the target decoded without telling it."""
        self.drafter.skip(max(0, min(self.llm.n_tokens, self.ctx_limit) - self.drafter.feature_end))

    def check_current(self, generation: object) -> None:
        """One Llama runs one generation at a time: a generation resumed after another one started
        (in another thread, or a stream left open) stops here instead of corrupting either."""
        if self.generation is not generation:
            raise RuntimeError("this generation was superseded: another generation started on the same "
                               "llama_eagle3.Llama (one Llama runs one generation at a time; use one Llama per "
                               "thread, or serialise requests, e.g. with python -m llama_eagle3.server)")
