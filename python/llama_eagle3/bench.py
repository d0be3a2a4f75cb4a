"""`llama-eagle3 bench`: plain llama-cpp-python, its prompt lookup decoding, and EAGLE-3,
interleaved prompt by prompt in one run (the order rotates), greedy chat completions."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Optional

import llama_cpp
from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

from .llama import Llama
from .train.prompts import load_prompts


def _run(llm: llama_cpp.Llama, messages: list[dict], max_tokens: int) -> tuple[str, int, float]:
    t0 = time.perf_counter()
    r = llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0.0)
    return r["choices"][0]["message"]["content"], r["usage"]["completion_tokens"], time.perf_counter() - t0


def bench(model: str, head: str, prompts_file: Path, max_tokens: int = 200, draft_max: int = 4,
          p_min: float = 0.0, threads: int = 2, n_ctx: int = 2048, methods: tuple[str, ...] = ("plain", "lookup", "eagle3"),
          log=print) -> dict:
    convs = load_prompts(prompts_file)
    common = dict(n_ctx=n_ctx, n_threads=threads, verbose=False, flash_attn=True)
    llms: dict[str, llama_cpp.Llama] = {}
    if "plain" in methods:
        llms["plain"] = llama_cpp.Llama(model, **common)
    if "lookup" in methods:
        llms["lookup"] = llama_cpp.Llama(model, draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10), **common)
    spec = Llama(model, eagle3_head=head, eagle3_draft_max=draft_max, eagle3_p_min=p_min, **common)
    llms["eagle3"] = spec
    order = [m for m in methods if m in llms]
    for name in order:  # warm-up
        _run(llms[name], [{"role": "user", "content": "Hi"}], 8)
    spec.reset_speculative_stats()
    rows = []
    for i, messages in enumerate(convs):
        rot = order[i % len(order):] + order[: i % len(order)]
        row: dict = {"prompt": messages[-1]["content"]}
        for name in rot:
            text, n, dt = _run(llms[name], messages, max_tokens)
            row[name] = {"tokens": n, "seconds": dt, "text": text}
        if "plain" in row:
            for name in order:
                if name != "plain":
                    row[name]["identical"] = row[name]["text"] == row["plain"]["text"]
                    row[name]["speedup"] = row["plain"]["seconds"] / row[name]["seconds"] * (
                        row[name]["tokens"] / max(row["plain"]["tokens"], 1))
        rows.append(row)
        log(f"[{i + 1}/{len(convs)}] " + "  ".join(f"{m} {row[m]['tokens'] / row[m]['seconds']:.1f} tok/s"
                                                  for m in order))
    stats = spec.speculative_stats()
    summary: dict = {"model": model, "head": head, "prompts": str(prompts_file), "n_prompts": len(rows),
                     "max_tokens": max_tokens, "draft_max": draft_max, "p_min": p_min, "threads": threads,
                     "methods": {}}
    for name in order:
        tok = sum(r[name]["tokens"] for r in rows)
        sec = sum(r[name]["seconds"] for r in rows)
        m = {"tokens": tok, "seconds": sec, "tokens_per_second": tok / sec}
        if name != "plain" and "plain" in order:
            sp = [r[name]["speedup"] for r in rows]
            m.update(median_speedup=statistics.median(sp), min_speedup=min(sp),
                     identical=sum(r[name]["identical"] for r in rows))
        summary["methods"][name] = m
    summary["eagle3"] = {k: stats[k] for k in ("rounds", "drafted", "accepted", "mean_accepted_length",
                                                "acceptance_rate", "acceptance_at", "draft_seconds",
                                                "verify_seconds", "sample_seconds", "overhead_seconds")}
    summary["rows"] = rows
    return summary


def print_table(s: dict, log=print) -> None:
    plain = s["methods"].get("plain")
    log(f"\n{s['n_prompts']} prompts, {s['max_tokens']} max new tokens, greedy, {s['threads']} threads, "
        f"EAGLE-3 chain depth {s['draft_max']}, p_min {s['p_min']}")
    log(f"{'method':<10}{'tokens/s':>10}{'vs plain':>10}{'median':>9}{'min':>7}{'identical':>11}")
    for name, m in s["methods"].items():
        ratio = f"{m['tokens_per_second'] / plain['tokens_per_second']:.2f}x" if plain else ""
        med = f"{m['median_speedup']:.2f}x" if "median_speedup" in m else ""
        mn = f"{m['min_speedup']:.2f}x" if "min_speedup" in m else ""
        ident = f"{m['identical']}/{s['n_prompts']}" if "identical" in m else ""
        log(f"{name:<10}{m['tokens_per_second']:>10.1f}{ratio:>10}{med:>9}{mn:>7}{ident:>11}")
    e = s["eagle3"]
    log(f"EAGLE-3: mean accepted length {e['mean_accepted_length']:.2f} (tokens per verify, bonus included), "
        f"acceptance per draft position {[round(a, 3) for a in e['acceptance_at']]}")


def save(s: dict, path: Optional[Path]) -> None:
    if path is not None:
        Path(path).write_text(json.dumps(s, indent=1))
