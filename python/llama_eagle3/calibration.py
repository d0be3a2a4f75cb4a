"""Start-up measurement of the costs the draft policy compares (policy.py), so that no
generation pays for warm-up rounds."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

from .tree import DraftTree
from . import tree_round

if TYPE_CHECKING:
    from .engine import Engine


def calibrate(engine: "Engine", warmup: Optional[int] = None, repeats: int = 3, rows_max: int = 0) -> None:
    """Measures, for the engine's draft policy, the target's decode time T(n) for every row count the
    policy compares (1..k_max + 1: plain decoding and every chain verify; a tree verify) and the
    head's step time, on throwaway positions of the empty context; both KV caches are emptied
    afterwards. Every chain length is measured, not interpolated: T(n) is not a straight line.
    On a compute-bound CPU two rows cost more than the line from T(1) to T(k_max + 1) says, and
    llama.cpp's CPU kernels for repacked quantizations take rows in blocks of 4: on this
    project's CPU, a Llama-8B-shaped Q4_K_M target measured T(1) 315 ms, T(2) 505, T(3) 640,
    T(4) 465, T(5) 658, so a chain of 3 was 2.06x plain at acceptance 0.95 while the
    interpolated T(4) (607) had auto decode plainly. Each row count is decoded warmup + repeats times in a row, T(1) first:
    the uncounted ones page in a freshly mapped model and, offloaded, let the backend build and
    reuse its graph for that shape, as in a steady run of that shape (CUDA graphs are rebuilt
    when the shape changes; interleaving the row counts measured the rebuilds on an H200, T(1)
    3.5 ms against 1.2 ms steady). warmup: 2 when layers are offloaded, else 1. The tree row
    count is timed on a stand-in tree (DraftTree.comb) verified like a real one."""
    llm, policy = engine.llm, engine.policy
    if warmup is None:
        warmup = 2 if policy.graph_rebuilds else 1
    limit = min(llm.n_batch, llm.context_params.n_ubatch, llm._n_ctx)
    rows = sorted({n for n in (*range(1, max(engine.draft_max + 1, rows_max) + 1), engine.tree_nodes + 1)
                   if n <= limit})
    tokens = [i % llm._n_vocab for i in range(1, rows[-1] + 1)]
    # a tree verify is timed as one: its sequences (one per leaf) and masks cost more than
    # as many plain rows (on an H200, 4.2 ms against 2.0 for 13 rows)
    tree = DraftTree.comb(engine.tree_width, engine.tree_nodes, engine.draft_max) \
        if engine.tree_nodes > engine.draft_max else None
    for n in rows:
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            # both read the captured rows: they wait for the backend
            if tree is not None and n == len(tree) + 1:
                tree_round.decode_tree(engine, [tokens[0], *tree.tokens], [0, *tree.depth], tree.row_sequences())
            else:
                engine.capture.decode(llm, tokens[:n], 0, 0)
            if i >= warmup:
                policy.observe_calibration(n, time.perf_counter() - t0)
            engine.forget_from(0)
    for i in range(warmup + repeats if engine.draft_max > 0 else 0):  # (no head: no step to time)
        step = engine.drafter.time_step(engine.draft_max)
        if i >= warmup:
            policy.observe_calibration_step(step)
