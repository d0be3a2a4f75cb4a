"""Fidelity diagnostics: where a method's greedy output departs from plain decoding's, and
whether the target itself explains the departure.

A departure at token i (prompt included) is "explained: batch kernel" when each side's token
at i is the target's own argmax at the row that chose it, recomputed by replaying that side's
decodes exactly: the same batches (tokens, positions, sequences, rows with logits) in the same
order from an empty KV cache, on a separate plain llama_cpp.Llama with the same settings. The
two texts then differ only because llama.cpp computed that position in batches of other shapes
(on the CPU with more than one thread: a single-token decode attending 512 or more KV cells
takes a split-KV flash-attention kernel that a batch of two or more rows does not, and the
attended cells are padded to a multiple of 256, so from the 257th token of context on; in
llama.cpp, ggml-cpu/ops.cpp: use_split_kv_path, llama-kv-cache.cpp: get_n_kv; on a GPU: other
matmul kernels). Anything else, a wrong row sampled, a KV cell left behind, a token the
target would not have chosen, is "unexplained: please report".

Nothing is decoded on the benchmarked instances: their caches, and so every later comparison,
are left as they were.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import llama_cpp
import llama_cpp._internals as internals
import numpy as np

EXPLAINED = "explained: batch kernel"
UNEXPLAINED = "unexplained: please report"


@dataclass(frozen=True)
class Batch:
    """One llama_decode's rows, in batch order (a copy: llama-cpp-python reuses its batches)."""
    tokens: tuple[int, ...]
    positions: tuple[int, ...]
    logits: tuple[bool, ...]
    seqs: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, b: llama_cpp.llama_batch) -> "Batch":
        n = b.n_tokens
        return cls(tuple(b.token[:n]), tuple(b.pos[:n]), tuple(bool(x) for x in b.logits[:n]),
                   tuple(tuple(b.seq_id[i][: b.n_seq_id[i]]) for i in range(n)))

    @property
    def multi_sequence(self) -> bool:
        return any(s != (0,) for s in self.seqs)


class DecodeLog:
    """Every llama_decode of llm's context between start() and stop(), in order. It wraps the
    context's decode method (llama_cpp.Llama, its speculative drafts and llama_eagle3.Llama all
    decode through it); what the context computes is unchanged. A recorded generation must start
    from an empty KV cache (llm.reset() first) for its replay to be exact."""

    def __init__(self, llm: llama_cpp.Llama):
        self.batches: list[Batch] = []
        self.recording = False
        self.n_seq_max = int(llama_cpp.llama_n_seq_max(llm._ctx.ctx))
        decode = llm._ctx.decode

        def recorded(batch: internals.LlamaBatch) -> None:
            if self.recording:
                self.batches.append(Batch.of(batch.batch))
            decode(batch)

        llm._ctx.decode = recorded

    def start(self) -> None:
        self.batches = []
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def producer(self, ids: Sequence[int], pos: int) -> tuple[int, int]:
        """(batch, row) whose logits chose ids[pos + 1] in the recorded generation of ids: the
        latest decode with a logits row at position pos on the committed path (its token and those
        of the rows it attends in the batch, lower positions of a sequence it is in, are ids').
        Rows off the path: rejected drafts, a tree's other branches; a later decode of a committed
        position (re-evaluation after a tree round) computes no logits there."""
        for b in range(len(self.batches) - 1, -1, -1):
            batch = self.batches[b]
            for r, (p, lg) in enumerate(zip(batch.positions, batch.logits)):
                if p == pos and lg and _on_path(batch, r, ids):
                    return b, r
        raise ValueError(f"no recorded decode computed logits at position {pos} on the committed path")


def _on_path(batch: Batch, r: int, ids: Sequence[int]) -> bool:
    """Whether row r and every row of the batch it attends (a lower position in one of its
    sequences) carry the tokens of ids at their positions."""
    seqs = set(batch.seqs[r])
    return all(t == ids[p] for t, p, ss in zip(batch.tokens, batch.positions, batch.seqs)
               if p <= batch.positions[r] and not seqs.isdisjoint(ss))


def first_departure(want: Sequence[int], got: Sequence[int]) -> Optional[int]:
    """The first index where the token ids differ; None when one is a prefix of the other."""
    return next((j for j, (a, b) in enumerate(zip(want, got)) if a != b), None)


def _twin(model: str, settings: dict, n_seq_max: int) -> llama_cpp.Llama:
    """A plain llama_cpp.Llama with the given settings; n_seq_max > 1: its context is made again
    as a tree-verifying llama_eagle3.Llama's is (capture.attach_to: that many sequences, one
    unified KV cache), without the feature capture, which reads the graph without changing it."""
    llm = llama_cpp.Llama(model, **{**settings, "verbose": False})
    if n_seq_max > 1:
        llm._ctx.close()
        params = llm.context_params
        params.n_seq_max = n_seq_max
        params.kv_unified = True
        llm._ctx = llm._stack.enter_context(contextlib.closing(
            internals.LlamaContext(model=llm._model, params=params, verbose=False)))
    return llm


def replay(twin: llama_cpp.Llama, batches: Sequence[Batch], rows: Iterable[tuple[int, int]]) -> dict:
    """Decodes batches (up to the last one rows name) on twin from an empty KV cache and returns
    the logits of each (batch, row) in rows. Between decodes it does what the engines do, whose
    invariant is that before a decode the KV holds sequence 0's cells below the batch's first
    position: after a multi-sequence batch only sequence 0 is kept, cells from the batch's first
    position on are removed, and every other sequence of the batch starts as a copy of
    sequence 0. llama.cpp places cells the same way then, so each row is computed as it was."""
    wanted: dict[int, list[int]] = {}
    for b, r in rows:
        wanted.setdefault(b, []).append(r)
    if not wanted:
        return {}
    mem = twin._ctx.memory
    llama_cpp.llama_memory_clear(mem, True)
    todo = batches[: max(wanted) + 1]
    lb = internals.LlamaBatch(n_tokens=max(len(b.tokens) for b in todo), embd=0,
                              n_seq_max=max(len(s) for b in todo for s in b.seqs), verbose=False)
    out = {}
    multi = False
    for i, batch in enumerate(todo):
        if multi:
            llama_cpp.llama_memory_seq_keep(mem, 0)
        llama_cpp.llama_memory_seq_rm(mem, -1, min(batch.positions), -1)
        for s in sorted({s for ss in batch.seqs for s in ss} - {0}):
            llama_cpp.llama_memory_seq_cp(mem, 0, s, -1, -1)
        _fill(lb.batch, batch)
        twin._ctx.decode(lb)
        multi = batch.multi_sequence
        for r in wanted.get(i, []):
            out[(i, r)] = np.ctypeslib.as_array(twin._ctx.get_logits_ith(r), shape=(twin.n_vocab(),)).copy()
    lb.close()
    return out


def _fill(b: llama_cpp.llama_batch, batch: Batch) -> None:
    b.n_tokens = len(batch.tokens)
    for i, (t, p, lg, ss) in enumerate(zip(batch.tokens, batch.positions, batch.logits, batch.seqs)):
        b.token[i], b.pos[i], b.logits[i], b.n_seq_id[i] = t, p, lg, len(ss)
        for j, s in enumerate(ss):
            b.seq_id[i][j] = s


class Diagnosis:
    """Explains departures from plain greedy output on separate instances of the target (one per
    context shape, made on first use with the bench's settings)."""

    def __init__(self, model: str, settings: dict):
        self.model = model
        self.settings = settings
        self._twins: dict[int, llama_cpp.Llama] = {}

    def twin(self, n_seq_max: int) -> llama_cpp.Llama:
        if n_seq_max not in self._twins:
            self._twins[n_seq_max] = _twin(self.model, self.settings, n_seq_max)
        return self._twins[n_seq_max]

    def explain(self, plain: tuple[Sequence[int], DecodeLog],
                others: dict[str, tuple[Sequence[int], DecodeLog]]) -> dict[str, dict]:
        """For each method of others whose token ids (prompt included, from its recorded
        generation) depart from plain's: {"at": i, "plain_token", "token", "rows" (rows of the
        method's decode that chose its token), "row", "gap" (that row's logit of the method's
        token minus plain's token's), "plain_gap" (plain's row: plain's token minus the method's),
        "explained", "verdict"}. One replay of plain serves every method."""
        want, plain_log = plain
        found = {name: (i, ids, log) for name, (ids, log) in others.items()
                 if (i := first_departure(want, ids)) is not None}
        if not found:
            return {}
        plain_rows = {name: plain_log.producer(want, i - 1) for name, (i, _, _) in found.items()}
        plain_logits = replay(self.twin(plain_log.n_seq_max), plain_log.batches, plain_rows.values())
        out = {}
        for name, (i, got, log) in found.items():
            b, r = log.producer(got, i - 1)
            mine = replay(self.twin(log.n_seq_max), log.batches, [(b, r)])[(b, r)]
            theirs = plain_logits[plain_rows[name]]
            ok = mine[got[i]] == mine.max() and theirs[want[i]] == theirs.max()
            out[name] = {"at": i, "plain_token": int(want[i]), "token": int(got[i]),
                         "rows": len(log.batches[b].tokens), "row": r,
                         "gap": float(mine[got[i]] - mine[want[i]]),
                         "plain_gap": float(theirs[want[i]] - theirs[got[i]]),
                         "explained": bool(ok), "verdict": EXPLAINED if ok else UNEXPLAINED}
        return out

    def close(self) -> None:
        for llm in self._twins.values():
            llm.close()
        self._twins.clear()
