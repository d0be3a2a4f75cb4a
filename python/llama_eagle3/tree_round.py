"""A tree round: draft a tree, verify it in one multi-sequence decode, keep the accepted path.

The batch is laid out depth first (tree.py): row 0 is the root (the last committed token t_n at
position n), row 1 + i node i at n + depth[i]. After verification the cells of t_n and of the
accepted nodes on the head's top-1 chain are kept (sequence 0, in cell order); accepted tokens
past a branch are committed, their features and cells dropped, and the next round re-evaluates
them (Engine.resync), as after a stop.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from ._native import llama_cpp
from .verifier import accept_tree

if TYPE_CHECKING:
    from .engine import Engine


def tree_round(engine: "Engine", root: int, t_round: float) -> tuple[list[int], int]:
    """Drafts a tree after root (the last committed token, position n), verifies root and every
    node in one decode and keeps the accepted path. Returns what Engine.round returns."""
    llm, stats, policy = engine.llm, engine.stats, engine.policy
    n0 = llm.n_tokens
    t0 = time.perf_counter()
    tree = engine.drafter.propose_tree(llm.input_ids, root, engine.draft_max, engine.tree_width,
                                       engine.tree_nodes).depth_first()
    t1 = time.perf_counter()
    stats.draft_seconds += t1 - t0
    stats.proposals += 1
    seqs = tree.row_sequences()                      # [1 + m] sequence ids per batch row
    features = decode_tree(engine, [root, *tree.tokens], [n0, *(n0 + d for d in tree.depth)], seqs)
    t2 = time.perf_counter()
    stats.verify_seconds += t2 - t1
    policy.observe_decode(len(tree) + 1, t2 - t1)

    def sample_row(r: int) -> int:
        path = tree.path_to(r - 1) if r > 0 else []
        for j, node in enumerate(path):              # logits processors see the row's prefix
            llm.input_ids[n0 + 1 + j] = tree.tokens[node]
        llm.n_tokens = n0 + 1 + len(path)
        return llm._sampler.sample(llm._ctx, r)

    committed, path = accept_tree(sample_row, tree)
    stats.sample_seconds += time.perf_counter() - t2
    rows = [0, *(i + 1 for i in path)]               # batch rows of positions n0..n0+a
    if llm._logits_all:
        for j, r in enumerate(rows):
            llm.scores[n0 + j, :] = np.ctypeslib.as_array(llm._ctx.get_logits_ith(r), shape=(llm._n_vocab,))
    kept = rows[: 1 + tree.chain_prefix(path)]     # rows 0..j: cells in order, sequence 0
    keep_sequence_0(engine, n0 + len(kept))
    engine.drafter.observe(features[kept], llm.input_ids)
    stats.record_round(len(tree), len(path), depth=max(tree.depth, default=0))
    policy.observe_tree(len(committed), t1 - t0)
    policy.observe_overhead(len(tree) + 1, time.perf_counter() - t_round - (t2 - t0))
    return committed, n0


def decode_tree(engine: "Engine", tokens: list[int], positions: list[int], seqs: list[list[int]]) -> np.ndarray:
    """One decode of a tree batch (logits on every row) after copying the committed context
    into every leaf's sequence; returns the rows' features [len(tokens), 3*Ht]."""
    llm = engine.llm
    engine.forget_from(llm.n_tokens)
    for s in range(1, len(seqs[0])):
        llama_cpp.llama_memory_seq_cp(llm._ctx.memory, 0, s, -1, -1)
    b = engine.tree_batch.batch
    b.n_tokens = len(tokens)
    for i, (t, p, ss) in enumerate(zip(tokens, positions, seqs)):
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, p, len(ss), True
        for j, s in enumerate(ss):
            b.seq_id[i][j] = s
    llm.input_ids[llm.n_tokens] = tokens[0]
    engine.capture.begin()
    llm._ctx.decode(engine.tree_batch)
    return engine.capture.take(len(tokens))


def keep_sequence_0(engine: "Engine", end: int) -> None:
    """After a tree verify: keeps sequence 0's cells below position end (every other sequence's
    cells go); the target KV then holds input_ids[:end]."""
    llama_cpp.llama_memory_seq_keep(engine.llm._ctx.memory, 0)
    engine.forget_from(end)
    engine.llm.n_tokens = end
