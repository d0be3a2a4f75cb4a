"""What auto adds to a plain step, measured side by side in one run.

    python tools/plain_overhead.py --model M.gguf --head H.gguf --prompts P.jsonl [--max-prompts 8]

Four instances decode every prompt greedily, interleaved prompt by prompt (the order rotates),
each from an empty cache, timed from the first token to the last (bench_simulated.timed_generation):
- plain: llama_cpp.Llama;
- control: a second llama_cpp.Llama (its ratio to plain is the machine's noise);
- auto: llama_eagle3.Llama with the adaptive policy, as shipped (n-gram copies included);
- auto-head-only: the same without n-gram copies (eagle3_ngram=False): where the head cannot
  pay, what the EAGLE-3 machinery and the plain fallback (fallback.py) cost around plain decoding.
Prints, per instance, the median and the worst of its per-prompt ratios to plain, its total
tokens/s and its overall ratio to plain.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import llama_cpp

from llama_eagle3 import Llama
from llama_eagle3.bench_simulated import Timing, prompt_tokens, timed_generation
from llama_eagle3.prompts import load_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--head", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--max-prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    common = dict(n_ctx=2048, n_threads=a.threads, verbose=False, flash_attn=True)
    llms = {"plain": llama_cpp.Llama(a.model, **common), "control": llama_cpp.Llama(a.model, **common),
            "auto": Llama(a.model, eagle3_head=a.head, **common),
            "auto-head-only": Llama(a.model, eagle3_head=a.head, eagle3_ngram=False, **common)}
    names = list(llms)
    prompts = [prompt_tokens(llms["plain"], m) for m in load_prompts(Path(a.prompts))[: a.max_prompts]]
    for llm in llms.values():  # warm-up
        timed_generation(llm, prompts[0], 8)
    per_prompt: dict[str, list[float]] = {n: [] for n in names}
    total = {n: Timing() for n in names}
    for i, tokens in enumerate(prompts):
        for name in names[i % len(names):] + names[: i % len(names)]:
            t = timed_generation(llms[name], tokens, a.max_tokens)
            total[name] += t
            per_prompt[name].append(t.decode_rate)
    out = {}
    for name in names:
        ratios = [r / p for r, p in zip(per_prompt[name], per_prompt["plain"])]
        overall = total[name].decode_rate / total["plain"].decode_rate
        out[name] = {"tokens_per_second": total[name].decode_rate, "median_ratio": statistics.median(ratios),
                     "worst_ratio": min(ratios), "overall_ratio": overall}
        print(f"{name:<18}{total[name].decode_rate:8.1f} tok/s   overall {overall:.3f}x   median "
              f"{statistics.median(ratios):.3f}x   worst {min(ratios):.3f}x of plain")
    stats = {n: llms[n].speculative_stats() for n in ("auto", "auto-head-only")}
    for n, s in stats.items():
        print(f"{n}: {s['rounds']} verify rounds {dict((d, v['rounds']) for d, v in s['drafters'].items())}, "
              f"{s['plain_steps']} plain steps ({s['uncaptured_steps']} uncaptured), {s['fallback_steps']} in the "
              f"fallback, {s['probes']} probes")
    if a.json:
        Path(a.json).write_text(json.dumps({"results": out, "stats": stats, "prompts": a.prompts,
                                            "n_prompts": len(prompts), "max_tokens": a.max_tokens,
                                            "threads": a.threads}, indent=1))


if __name__ == "__main__":
    main()
