"""The cost of one proposal of k drafts, per drafter, measured side by side in one run.

    python tools/proposal_cost.py --model M.gguf --head EAGLE3.gguf --dflash-head DFLASH.gguf \
        [--lengths 1,4,8,15] [--context 100] [--repeats 15] [--threads 2] [--json out.json]

Each head is loaded on the target (llama_eagle3.Llama, fixed drafts, no n-gram copies), the
target evaluates `--context` tokens (captured: the head's context holds them), and then, per
proposal, one more token (a round that committed one token: its features are the one pending
row) before the drafter is asked for k drafts; `--repeats` proposals per length, the lengths
interleaved (a slow spell of the machine hits every length alike). Timed: the drafter's
propose() alone, as rounds.py times it (draft_seconds): the pending row's catch-up and the
drafts; the first proposal also decodes the context into the head and is not kept.
- EAGLE-3: a chain of k head steps (k decodes of one row);
- DFlash: one block decode of [last token, MASK x k] (k + 1 rows, non-causal) and the removal
  of its cells. A block of 16 rows holds 15 drafts: a 16-row DFlash head drafts at most 15.
Prints the median ms per proposal per drafter and length, and each length's ratio
DFlash / EAGLE-3.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from llama_eagle3 import Llama


def drafter_costs(model: str, head: str, lengths: list[int], context: int, repeats: int, threads: int,
                  n_gpu_layers: int) -> dict[int, float]:
    """Median seconds of one proposal of k drafts, per k."""
    llm = Llama(model, eagle3_head=head, eagle3_draft_max=max(lengths), eagle3_p_min=0.0, eagle3_adaptive=False,
                eagle3_ngram=False, eagle3_tree_width=1, n_ctx=max(512, 2 * context), n_threads=threads,
                n_gpu_layers=n_gpu_layers, verbose=False)
    rng = np.random.default_rng(0)
    tokens = [int(t) for t in rng.integers(100, llm.n_vocab() - 100, size=context + 1 + repeats * len(lengths))]
    llm.eval(tokens[:context])
    drafter = llm._engine.drafter
    drafter.propose(llm.input_ids, tokens[context], max(lengths), 0.0)  # the context's catch-up: not kept
    samples: dict[int, list[float]] = {k: [] for k in lengths}
    n = context
    for r in range(repeats):
        for k in (lengths if r % 2 == 0 else lengths[::-1]):
            llm.eval([tokens[n]])  # the target's token at n: its features become the pending row
            n += 1
            t0 = time.perf_counter()
            drafter.propose(llm.input_ids, tokens[n], k, 0.0)
            samples[k].append(time.perf_counter() - t0)
    llm.close()
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--head", required=True, help="an EAGLE-3 head GGUF")
    p.add_argument("--dflash-head", required=True, help="a DFlash head GGUF")
    p.add_argument("--lengths", default="1,4,8,15", help="drafts per proposal, comma-separated")
    p.add_argument("--context", type=int, default=100, help="target tokens before the proposals")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-gpu-layers", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    lengths = [int(k) for k in a.lengths.split(",") if k]
    out = {}
    for name, head in (("eagle3", a.head), ("dflash", a.dflash_head)):
        out[name] = drafter_costs(a.model, head, lengths, a.context, a.repeats, a.threads, a.n_gpu_layers)
    print(f"one proposal of k drafts, median of {a.repeats}, after {a.context} target tokens, {a.threads} threads "
          f"({a.model})")
    print(f"{'k':>4}{'EAGLE-3 chain':>16}{'DFlash block':>15}{'DFlash / EAGLE-3':>19}")
    for k in lengths:
        e, d = out["eagle3"][k], out["dflash"][k]
        print(f"{k:>4}{1e3 * e:>13.2f} ms{1e3 * d:>12.2f} ms{d / e:>18.2f}x")
    if a.json:
        a.json.write_text(json.dumps({"model": a.model, "head": a.head, "dflash_head": a.dflash_head,
                                      "context": a.context, "repeats": a.repeats, "threads": a.threads,
                                      "ms": {n: {k: 1e3 * v for k, v in c.items()} for n, c in out.items()}},
                                     indent=1))


if __name__ == "__main__":
    main()
