"""Fidelity diagnostics: where a method's output departs from plain decoding's, greedy or
sampled, and whether the target itself explains the departure.

Both engines draw one token per committed position, in position order, from one sampler chain
(llama_cpp.Llama.generate samples each row it evaluated; llama_eagle3.Llama samples its verify
rows in row order and commits every sample, stopping at the first that leaves the draft), so the
nth draw of a run chose the token at position n_prompt + n, and, with the same seed, is
reproducible from the same sequence of logits rows.

A departure at token i (prompt included) is "explained: batch kernel" when, for each side,
replaying that side's decodes exactly (the same batches: tokens, positions, sequences, rows with
logits, in the same order from an empty KV cache, on a separate plain llama_cpp.Llama with the
same settings) and drawing each committed token again with a fresh sampler of the same settings
and seed, in the same order of draws, gives every token that side committed up to and including
i: greedy, the target's own argmax at each row; sampled, what the target's own sampler draws from
the logits that side computed. The two texts then differ only because llama.cpp computed those
logits in batches of other shapes (on the CPU with more than one thread: a single-token decode
attending 512 or more KV cells takes a split-KV flash-attention kernel that a batch of two or
more rows does not, and the attended cells are padded to a multiple of 256, so from the 257th
token of context on; in llama.cpp, ggml-cpu/ops.cpp: use_split_kv_path, llama-kv-cache.cpp:
get_n_kv; on a GPU: other matmul kernels). Anything else, a wrong row sampled, a draw out of
order, a KV cell left behind, a token the target would not have drawn, is "unexplained: please
report".

Nothing is decoded on the benchmarked instances: their caches, and so every later comparison,
are left as they were.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence

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


@dataclass
class Generation:
    """How a recorded generation drew its tokens: its nth draw (n = 0, 1, ...) chose the token at
    position n_prompt + n (see the module doc)."""
    n_prompt: int                                   # the prompt tokens generate() was given
    settings: dict = field(default_factory=dict)    # llama_cpp.Llama._init_sampler's keyword arguments
    seed: Optional[int] = None                      # llm._seed when the sampler was made (None: not yet)


class DecodeLog:
    """Every llama_decode of llm's context between start() and stop(), in order, and how each
    generation started in between samples. It wraps the context's decode method (llama_cpp.Llama,
    its speculative drafts and llama_eagle3.Llama all decode through it), llm.generate (the prompt's
    length) and llm._init_sampler (the sampler's settings and seed); what llm computes and draws is
    unchanged. A replay needs one recorded generation started from an empty KV cache (llm.reset()
    first)."""

    def __init__(self, llm: llama_cpp.Llama):
        self.batches: list[Batch] = []
        self.generations: list[Generation] = []
        self.recording = False
        self.n_seq_max = int(llama_cpp.llama_n_seq_max(llm._ctx.ctx))
        decode, generate, init_sampler = llm._ctx.decode, llm.generate, llm._init_sampler

        def recorded(batch: internals.LlamaBatch) -> None:
            if self.recording:
                self.batches.append(Batch.of(batch.batch))
            decode(batch)

        def recorded_generate(tokens: Sequence[int], *args, **kwargs) -> Iterator[int]:
            if self.recording:
                self.generations.append(Generation(len(tokens)))
            return generate(tokens, *args, **kwargs)

        def recorded_init_sampler(**kwargs) -> internals.LlamaSampler:
            if self.recording and self.generations:  # generate() makes its sampler before any draw
                self.generations[-1].settings, self.generations[-1].seed = dict(kwargs), llm._seed
            return init_sampler(**kwargs)

        llm._ctx.decode, llm.generate, llm._init_sampler = recorded, recorded_generate, recorded_init_sampler

    def start(self) -> None:
        self.batches = []
        self.generations = []
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    @property
    def generation(self) -> Generation:
        """The one generation recorded; ValueError when there is not exactly one that sampled."""
        sampled = [g for g in self.generations if g.seed is not None]
        if len(self.generations) != 1 or not sampled:
            raise ValueError(f"a replay needs exactly one recorded generation that sampled (generate() between "
                             f"start() and stop(), from an empty KV cache); this recording holds "
                             f"{len(self.generations)}, {len(sampled)} of which sampled")
        return sampled[0]

    def producers(self, ids: Sequence[int], drawn: Iterable[int]) -> dict[int, tuple[int, int]]:
        """{j: (batch, row)} for each position j in drawn: the row whose logits chose ids[j] in the
        recorded generation of ids, the latest decode with a logits row at position j - 1 on the
        committed path (its token and those of the rows it attends in the batch, lower positions of
        a sequence it is in, are ids'). Rows off the path: rejected drafts, a tree's other
        branches; a later decode of a committed position (re-evaluation after a tree round)
        computes no logits there."""
        drawn = set(drawn)
        found: dict[int, tuple[int, int]] = {}
        for b, batch in enumerate(self.batches):
            for r, (p, lg) in enumerate(zip(batch.positions, batch.logits)):
                if lg and p + 1 in drawn and _on_path(batch, r, ids):
                    found[p + 1] = (b, r)
        missing = drawn - found.keys()
        if missing:
            raise ValueError(f"no recorded decode computed logits at position {min(missing) - 1} on the "
                             f"committed path")
        return found


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


def _decoded(twin: llama_cpp.Llama, batches: Sequence[Batch]) -> Iterator[int]:
    """Decodes batches on twin from an empty KV cache, yielding each one's index once it is decoded
    (its logits are readable until the next). Between decodes it does what the engines do, whose
    invariant is that before a decode the KV holds sequence 0's cells below the batch's first
    position: after a multi-sequence batch only sequence 0 is kept, cells from the batch's first
    position on are removed, and every other sequence of the batch starts as a copy of
    sequence 0. llama.cpp places cells the same way then, so each row is computed as it was."""
    mem = twin._ctx.memory
    llama_cpp.llama_memory_clear(mem, True)
    lb = internals.LlamaBatch(n_tokens=max(len(b.tokens) for b in batches), embd=0,
                              n_seq_max=max(len(s) for b in batches for s in b.seqs), verbose=False)
    try:
        multi = False
        for i, batch in enumerate(batches):
            if multi:
                llama_cpp.llama_memory_seq_keep(mem, 0)
            llama_cpp.llama_memory_seq_rm(mem, -1, min(batch.positions), -1)
            for s in sorted({s for ss in batch.seqs for s in ss} - {0}):
                llama_cpp.llama_memory_seq_cp(mem, 0, s, -1, -1)
            _fill(lb.batch, batch)
            twin._ctx.decode(lb)
            multi = batch.multi_sequence
            yield i
    finally:
        lb.close()


@dataclass(frozen=True)
class Redrawn:
    """The target's own draws replaying one side's decodes (redraw): tokens[j - first] is the draw
    for position j, from first (the prompt's length) on; rows[j]: the (batch, row) it was drawn
    from; logits[j]: that row's logits, for the positions asked for."""
    first: int
    tokens: list[int]
    rows: dict[int, tuple[int, int]]
    logits: dict[int, np.ndarray]

    def token(self, j: int) -> int:
        return self.tokens[j - self.first]

    def reproduces(self, ids: Sequence[int], end: int) -> bool:
        """Whether every draw up to and including position end is the token ids has there."""
        return self.tokens[: end + 1 - self.first] == [int(t) for t in ids[self.first : end + 1]]


def redraw(twin: llama_cpp.Llama, log: DecodeLog, ids: Sequence[int], end: int,
           keep: Iterable[int] = ()) -> Redrawn:
    """Replays log's decodes on twin up to the one that drew position end, drawing each committed
    token of ids from the prompt's end to end as the recorded generation did: a fresh sampler of
    its settings and seed, one draw per position in position order, each from the row that chose
    it (DecodeLog.producers) right after that row's decode. keep: positions whose rows' logits
    come back too. ValueError where the draws cannot be replayed."""
    gen = log.generation
    if gen.settings.get("logits_processor") is not None:
        raise ValueError("a generation with a logits_processor cannot be replayed (it reads the instance's "
                         "own token history)")
    if not gen.n_prompt <= end < len(ids):
        raise ValueError(f"position {end} was not drawn: the draws chose positions {gen.n_prompt}..{len(ids) - 1}")
    drawn = range(gen.n_prompt, end + 1)
    rows = log.producers(ids, drawn)
    batches = [rows[j][0] for j in drawn]
    if batches != sorted(batches):
        raise ValueError("the recorded draws are not in decode order (a position drawn from a decode before its "
                         "predecessor's): they cannot be replayed")
    by_batch: dict[int, list[int]] = {}
    for j in drawn:
        by_batch.setdefault(rows[j][0], []).append(j)
    kept = set(keep)
    twin.set_seed(gen.seed)
    sampler = twin._init_sampler(**gen.settings)
    tokens: list[int] = []
    logits: dict[int, np.ndarray] = {}
    try:
        for b in _decoded(twin, log.batches[: batches[-1] + 1]):
            for j in by_batch.get(b, []):
                r = rows[j][1]
                if j in kept:
                    logits[j] = np.ctypeslib.as_array(twin._ctx.get_logits_ith(r), shape=(twin.n_vocab(),)).copy()
                tokens.append(int(sampler.sample(twin._ctx, r)))
    finally:
        sampler.close()
    return Redrawn(gen.n_prompt, tokens, rows, logits)


def _fill(b: llama_cpp.llama_batch, batch: Batch) -> None:
    b.n_tokens = len(batch.tokens)
    for i, (t, p, lg, ss) in enumerate(zip(batch.tokens, batch.positions, batch.logits, batch.seqs)):
        b.token[i], b.pos[i], b.logits[i], b.n_seq_id[i] = t, p, lg, len(ss)
        for j, s in enumerate(ss):
            b.seq_id[i][j] = s


class Diagnosis:
    """Explains departures from plain decoding's output, greedy or sampled, on separate instances
    of the target (one per context shape, made on first use with the bench's settings)."""

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
        generation) depart from plain's: {"at": i, "plain_token", "token", "plain_drawn", "drawn"
        (the tokens the target's own sampler draws at i replaying plain's and the method's
        decodes), "rows" (rows of the method's decode that drew its token), "row", "gap" (that
        row's logit of the method's token minus plain's token's), "plain_gap" (plain's row: plain's
        token minus the method's), "explained", "verdict"}. One replay of plain serves every method."""
        want, plain_log = plain
        found = {name: (i, ids, log) for name, (ids, log) in others.items()
                 if (i := first_departure(want, ids)) is not None}
        if not found:
            return {}
        at = {i for i, _, _ in found.values()}
        theirs = redraw(self.twin(plain_log.n_seq_max), plain_log, want, max(at), at)
        out = {}
        for name, (i, got, log) in found.items():
            mine = redraw(self.twin(log.n_seq_max), log, got, i, [i])
            out[name] = _verdict(i, want, got, theirs, mine, len(log.batches[mine.rows[i][0]].tokens))
        return out

    def close(self) -> None:
        for llm in self._twins.values():
            llm.close()
        self._twins.clear()


def _verdict(i: int, want: Sequence[int], got: Sequence[int], theirs: Redrawn, mine: Redrawn, n_rows: int) -> dict:
    """The departure at i of got from want, given each side's redraws (see Diagnosis.explain)."""
    ok = theirs.reproduces(want, i) and mine.reproduces(got, i)
    a, b = mine.logits[i], theirs.logits[i]
    return {"at": i, "plain_token": int(want[i]), "token": int(got[i]),
            "plain_drawn": theirs.token(i), "drawn": mine.token(i), "rows": n_rows, "row": mine.rows[i][1],
            "gap": float(a[got[i]] - a[want[i]]), "plain_gap": float(b[want[i]] - b[got[i]]),
            "explained": ok, "verdict": EXPLAINED if ok else UNEXPLAINED}
