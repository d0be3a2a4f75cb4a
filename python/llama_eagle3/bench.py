"""`llama-eagle3 bench`: plain llama-cpp-python, its prompt lookup decoding, EAGLE-3 with a fixed
chain, with a fixed tree, and adaptive (policy.py: draft length, tree or chain, or off), and
optionally upstream llama.cpp's C++ EAGLE-3 (`llama-speculative-simple --spec-type
draft-eagle3`, one process per prompt, its own timings), interleaved prompt by prompt in one
run (the order rotates), greedy or sampled chat completions; where a method's text departs from
plain's, fidelity.py says whether the target's own kernels explain it."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Optional

import llama_cpp
from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

from .fidelity import DecodeLog, Diagnosis
from .llama import Llama
from .prompts import load_prompts, rendered_prompt

# control: plain llama-cpp-python again, a second instance: its ratios to plain are the machine's
# own noise (how far a method that costs nothing would fall on its worst prompt by chance)
# dflash, dflash-auto: the --dflash-head's fixed block of draft_max drafts, and adaptive
METHODS = ("plain", "control", "lookup", "eagle3", "tree", "auto", "dflash", "dflash-auto", "default")
DEFAULT_METHODS = ("plain", "lookup", "eagle3", "tree", "auto")
SPECULATIVE = ("eagle3", "tree", "auto", "dflash", "dflash-auto", "default")
_STATS = ("rounds", "proposals", "head_decodes", "drafted", "accepted", "plain_steps", "fallback_steps", "uncaptured_steps", "probes", "drafters", "mean_accepted_length", "acceptance_rate",
          "acceptance_at", "draft_seconds", "verify_seconds", "sample_seconds", "plain_decode_seconds",
          "overhead_seconds", "policy")


def _run(llm: llama_cpp.Llama, messages: list[dict], max_tokens: int, temperature: float = 0.0,
         seed: int = 0) -> tuple[str, int, float, list[int]]:
    """(text, completion tokens, seconds, the prompt and completion token ids the target evaluated).
    Every run starts from an empty cache: the whole prompt is decoded, the same batches for every
    method and repeat (plain decoding's own greedy text depends on what its cache held before)."""
    llm.reset()
    t0 = time.perf_counter()
    r = llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=temperature, seed=seed)
    dt = time.perf_counter() - t0
    return r["choices"][0]["message"]["content"], r["usage"]["completion_tokens"], dt, llm._input_ids.tolist()


def device_info() -> dict:
    """What the numbers were measured on: llama.cpp's backend features and the host's CPUs."""
    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()), "cpu": cpu or platform.processor(),
            "cpu_count": os.cpu_count(), "system_info": llama_cpp.llama_print_system_info().decode(errors="replace")}


def _make(name: str, model: str, head: str, draft_max: int, p_min: float, tree: tuple[int, int],
          common: dict, dflash_head: Optional[str] = None) -> llama_cpp.Llama:
    if name in ("dflash", "dflash-auto"):
        if dflash_head is None:
            raise ValueError(f"bench method {name!r} needs a DFlash head (--dflash-head)")
        return Llama(model, eagle3_head=dflash_head, eagle3_draft_max=draft_max, eagle3_p_min=p_min,
                     eagle3_adaptive=name == "dflash-auto", **common)
    if name in ("plain", "control"):
        return llama_cpp.Llama(model, **common)
    if name == "lookup":
        return llama_cpp.Llama(model, draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10), **common)
    if name == "default":  # what a user gets with nothing set but the head
        return Llama(model, eagle3_head=head, **common)
    width = tree[0] if name in ("tree", "auto") else 1
    return Llama(model, eagle3_head=head, eagle3_draft_max=draft_max, eagle3_p_min=p_min,
                 eagle3_adaptive=name == "auto", eagle3_tree_width=width, eagle3_tree_nodes=tree[1], **common)


class Upstream:
    """llama.cpp's own C++ EAGLE-3 (`llama-speculative-simple`, built from the llama.cpp that
    llama-cpp-python vendors) on one chat prompt: the prompt text is rendered with the
    target's chat template here; its time is the binary's own encode + decode timing (model
    loading excluded, as for the in-process methods); its text is what it prints after the
    prompt."""

    def __init__(self, binary: Path, model: str, head: str, n_max: int, threads: int, n_ctx: int,
                 n_gpu_layers: int, template: llama_cpp.Llama, p_min: Optional[float] = None):
        ngl = str(n_gpu_layers if n_gpu_layers >= 0 else 999)  # llama-cpp-python's -1 ("all")
        self.cmd = [str(binary), "-m", model, "-md", head, "--spec-type", "draft-eagle3", "--spec-draft-n-max",
                    str(n_max), "-t", str(threads), "-c", str(n_ctx), "-fa", "on", "-ngl", ngl, "-ngld", ngl]
        if p_min is not None:  # explicit: the simulated bench needs every round to draft n_max
            self.cmd += ["--spec-draft-p-min", str(p_min)]
        self.template = template

    def run(self, messages: list[dict], max_tokens: int, temperature: float = 0.0,
            seed: int = 0) -> tuple[str, int, float, dict]:
        """(text, tokens, encode + decode seconds, {n_drafted, n_accept, decode_seconds})."""
        prompt = rendered_prompt(self.template, messages)
        r = subprocess.run(self.cmd + ["-n", str(max_tokens), "--temp", str(temperature), "--seed", str(seed),
                                       "-p", prompt], capture_output=True, text=True)
        log = r.stdout + r.stderr
        enc = re.search(r"encoded\s+(\d+) tokens in\s+([\d.]+) seconds", log)
        dec = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds", log)
        if r.returncode != 0 or not enc or not dec:
            raise RuntimeError(f"{self.cmd[0]} failed (exit {r.returncode}): {log[-2000:]}")
        counts = {k: int(v) for k, v in re.findall(r"(n_drafted|n_accept)\s+=\s+(\d+)", log)}
        counts["decode_seconds"] = float(dec.group(2))  # the prompt's encode apart
        # stdout: "\n\n", the prompt, the generated text, "\n\n" after the loop and "\n\n" at exit
        text = r.stdout.split(prompt, 1)[-1].removesuffix("\n\n\n\n")
        # its count includes the end-of-generation token; without one the loop ran past max_tokens
        n = int(dec.group(1))
        return text, n - 1 if n <= max_tokens else n, float(enc.group(2)) + float(dec.group(2)), counts


def _same_output(out: dict, plain: dict, max_tokens: int) -> bool:
    """Whether a method's text is plain decoding's. Upstream's loop may commit a round's accepted
    drafts past max_tokens: where plain decoding stopped at max_tokens, its text is a prefix."""
    if out["tokens"] > max_tokens and plain["tokens"] == max_tokens:
        return out["text"].startswith(plain["text"])
    return out["text"] == plain["text"]


def bench(model: str, head: str, prompts_file: Path, max_tokens: int = 200, draft_max: int = 4,
          p_min: float = 0.0, threads: int = 2, n_ctx: int = 2048, methods: tuple[str, ...] = DEFAULT_METHODS,
          tree: tuple[int, int] = (3, 12), upstream: Optional[Path] = None, upstream_n_max: tuple[int, ...] = (),
          temperature: float = 0.0, repeats: int = 1, n_gpu_layers: int = 0, max_prompts: Optional[int] = None,
          dflash_head: Optional[str] = None, log=print) -> dict:
    """eagle3: a chain of draft_max every round (p_min cut-off); tree: a tree of (width, nodes) and
    depth draft_max every round; auto: the adaptive policy with the same bounds, trees included;
    upstream-nK: llama-speculative-simple at --spec-draft-n-max K. temperature > 0 samples with
    seed = the prompt's index for every method (EAGLE-3 then reproduces plain sampling's text
    seed for seed, up to the batch kernels; departures are diagnosed as greedy ones are).
    repeats > 1 runs each prompt that many times per method and keeps the fastest run's time (a
    run slowed by another process on the machine then does not decide the worst prompt) and the
    first run's text. Every run starts from an empty cache (_run).
    n_gpu_layers goes to every method, the head included (-1: all; CPU builds ignore it).
    max_prompts: the first that many prompts only. dflash/dflash-auto: dflash_head's fixed block of
    draft_max drafts and adaptive. Returns the summary (per-prompt rows under "rows")."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown bench methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if upstream_n_max and (upstream is None or not Path(upstream).is_file()):
        raise ValueError(f"--upstream must be the path of llama-speculative-simple, got {upstream}")
    convs = load_prompts(prompts_file)[:max_prompts]
    common = dict(n_ctx=n_ctx, n_threads=threads, n_gpu_layers=n_gpu_layers, verbose=False, flash_attn=True)
    order = [m for m in METHODS if m in methods]
    llms: dict = {name: _make(name, model, head, draft_max, p_min, tree, common, dflash_head) for name in order}
    template = llms[order[0]] if order else llama_cpp.Llama(model, vocab_only=True, verbose=False)
    for k in upstream_n_max:
        order.append(f"upstream-n{k}")
        llms[order[-1]] = Upstream(Path(upstream), model, head, k, threads, n_ctx, n_gpu_layers, template)
    for name in order:  # warm-up
        if isinstance(llms[name], llama_cpp.Llama):
            _run(llms[name], [{"role": "user", "content": "Hi"}], 8)
        if isinstance(llms[name], Llama):
            llms[name].reset_speculative_stats()
    # every in-process method's first run of each prompt is recorded, to explain where its text
    # departs from plain's (fidelity.py: greedy or sampled, the same seed, the same draws); texts are
    # compared first run against first run
    logs = {name: DecodeLog(llms[name]) for name in order if isinstance(llms[name], llama_cpp.Llama)} \
        if "plain" in order else {}
    diagnosis = Diagnosis(model, common)
    rows = []
    ids: dict[str, list[int]] = {}  # this prompt's token ids per in-process method (first run)
    for i, messages in enumerate(convs):
        rot = order[i % len(order):] + order[: i % len(order)]
        row: dict = {"prompt": messages[-1]["content"]}
        for r in range(repeats):  # repeats interleave too: a slow spell of the machine hits every method
            for name in rot:
                counts: dict = {}
                if name.startswith("upstream"):
                    text, n, dt, counts = llms[name].run(messages, max_tokens, temperature, i)
                else:
                    if r == 0 and name in logs:
                        logs[name].start()
                    text, n, dt, evaluated = _run(llms[name], messages, max_tokens, temperature, i)
                    if name in logs:
                        logs[name].stop()
                    if r == 0:
                        ids[name] = evaluated
                timing = {"tokens": n, "seconds": dt, **counts}
                if r == 0:  # the text of the first run (the recorded one), the timing of the fastest
                    row[name] = {**timing, "text": text}
                elif dt < row[name]["seconds"]:
                    row[name].update(timing)
        if "plain" in row:
            for name in order:
                if name != "plain":
                    row[name]["identical"] = _same_output(row[name], row["plain"], max_tokens)
                    row[name]["speedup"] = row["plain"]["seconds"] / row[name]["seconds"] * (
                        row[name]["tokens"] / max(row["plain"]["tokens"], 1))
            departed = {name: (ids[name], log) for name, log in logs.items()
                        if name != "plain" and not row[name]["identical"]}
            if departed:
                for name, d in diagnosis.explain((ids["plain"], logs["plain"]), departed).items():
                    row[name]["divergence"] = d
        rows.append(row)
        log(f"[{i + 1}/{len(convs)}] " + "  ".join(f"{m} {row[m]['tokens'] / row[m]['seconds']:.1f} tok/s"
                                                  for m in order))
    diagnosis.close()
    summary: dict = {"model": model, "head": head, "dflash_head": dflash_head, "prompts": str(prompts_file),
                     "n_prompts": len(rows),
                     "max_tokens": max_tokens, "temperature": temperature, "draft_max": draft_max, "p_min": p_min,
                     "threads": threads, "n_gpu_layers": n_gpu_layers, "repeats": repeats,
                     "device": device_info(),
                     "tree_width": tree[0], "tree_nodes": tree[1], "methods": {}, "speculative": {}}
    for name in order:
        tok = sum(r[name]["tokens"] for r in rows)
        sec = sum(r[name]["seconds"] for r in rows)
        m = {"tokens": tok, "seconds": sec, "tokens_per_second": tok / sec}
        if name != "plain" and "plain" in order:
            sp = [r[name]["speedup"] for r in rows]
            m.update(median_speedup=statistics.median(sp), min_speedup=min(sp),
                     identical=sum(r[name]["identical"] for r in rows))
            if name.startswith("upstream"):  # its draft counts, from the runs whose times are kept
                m.update({key: sum(r[name].get(key, 0) for r in rows) for key in ("n_drafted", "n_accept")})
            if name in logs:  # texts that differ: departures explained or not, the rest in the last token
                found = [r[name]["divergence"] for r in rows if "divergence" in r[name]]
                m.update(departures=len(rows) - m["identical"], explained=sum(d["explained"] for d in found),
                         unexplained=sum(not d["explained"] for d in found))
        summary["methods"][name] = m
        if name in SPECULATIVE:
            stats = llms[name].speculative_stats()
            summary["speculative"][name] = {k: stats[k] for k in _STATS if k in stats}
    if "plain" in summary["methods"]:
        plain = summary["methods"]["plain"]
        t1 = 1e3 * plain["seconds"] / max(plain["tokens"], 1)
        summary["bandwidth_bound_projection"] = {
            name: projection(summary["speculative"][name], t1) for name in ("eagle3", "tree")
            if name in summary["speculative"]}
    summary["rows"] = rows
    return summary


def projection(stats: dict, t1: float) -> dict:
    """Speedup a bandwidth-bound device (a GPU, Apple Silicon: T(n) ~ T(1) for the few rows of a
    chain or a small tree) would get from the measured acceptance: tokens per round /
    (1 + drafting time per round / T(1)), with the ratio of drafting to a plain token (t1 ms,
    all-in) measured here. A tree round is also followed by a re-evaluation decode when its
    accepted path left the head's top-1 chain; that is not counted here."""
    if not stats["rounds"] or not t1:
        return {}
    draft_ms = 1e3 * stats["draft_seconds"] / stats["rounds"]
    return {"tokens_per_round": stats["mean_accepted_length"], "draft_ms_per_round": draft_ms,
            "draft_over_target_token": draft_ms / t1,
            "speedup": stats["mean_accepted_length"] / (1 + draft_ms / t1)}


def _where(s: dict) -> str:
    d = s.get("device", {})
    on_gpu = d.get("gpu_offload") and s.get("n_gpu_layers", 0) != 0
    return f"{s['threads']} threads" + (f", GPU offload (n_gpu_layers {s['n_gpu_layers']})" if on_gpu else "")


def print_table(s: dict, log=print) -> None:
    plain = s["methods"].get("plain")
    sampling = "greedy" if not s.get("temperature") else f"temperature {s['temperature']} (seed = prompt index)"
    best = f", best of {s['repeats']} runs per prompt" if s.get("repeats", 1) > 1 else ""
    log(f"\n{s['n_prompts']} prompts, {s['max_tokens']} max new tokens, {sampling}, {_where(s)}{best}; "
        f"eagle3: chain of {s['draft_max']} every round (p_min {s['p_min']}); tree: width {s['tree_width']}, "
        f"{s['tree_nodes']} nodes, depth {s['draft_max']} every round; auto: adaptive (off, chain <= "
        f"{s['draft_max']} or the tree)" + ("; dflash: a block of that many drafts every round, dflash-auto: "
                                            "adaptive" if s.get("dflash_head") else ""))
    log(f"{'method':<10}{'tokens/s':>10}{'vs plain':>10}{'median':>9}{'min':>7}{'identical':>11}{'MAL':>7}")
    for name, m in s["methods"].items():
        ratio = f"{m['tokens_per_second'] / plain['tokens_per_second']:.2f}x" if plain else ""
        med = f"{m['median_speedup']:.2f}x" if "median_speedup" in m else ""
        mn = f"{m['min_speedup']:.2f}x" if "min_speedup" in m else ""
        ident = f"{m['identical']}/{s['n_prompts']}" if "identical" in m else ""
        mal = f"{s['speculative'][name]['mean_accepted_length']:.2f}" if name in s["speculative"] else ""
        if "n_drafted" in m and m["n_drafted"]:
            mal = f"acc {m['n_accept'] / m['n_drafted']:.2f}"
        log(f"{name:<10}{m['tokens_per_second']:>10.1f}{ratio:>10}{med:>9}{mn:>7}{ident:>11}{mal:>7}")
    for name, m in s["methods"].items():
        if m.get("departures"):
            at = [r[name]["divergence"]["at"] for r in s["rows"] if "divergence" in r[name]]
            rest = m["departures"] - m["explained"] - m["unexplained"]
            drawn = "argmax" if not s.get("temperature") else "own sampler's draw (same seed, same order of draws)"
            log(f"{name}: {m['departures']} of {s['n_prompts']} outputs depart from plain text (first "
                f"differing token {at}, prompt included): {m['explained']} explained: batch kernel (each side's "
                f"token is the target's {drawn} where its own decodes computed it), {m['unexplained']} "
                f"unexplained: please report (README, 'reporting a problem')"
                + (f"; {rest} only in the last token, which no run decodes" if rest else ""))
    for name, e in s["speculative"].items():
        p = e["policy"]
        log(f"{name}: {e['rounds']} verify rounds, {e['plain_steps']} plain steps; mean accepted length "
            f"{e['mean_accepted_length']:.2f} (tokens per verify, bonus included); acceptance per draft position "
            f"{[round(a, 3) for a in e['acceptance_at']]}; measured T(n) ms {p['decode_ms']}, "
            f"{'proposal' if p.get('draft_priced_per') == 'proposal' else 'head step'} {p['draft_step_ms']} ms; "
            f"loop overhead outside the models "
            f"{1e3 * e['overhead_seconds'] / max(e['rounds'] + e['plain_steps'], 1):.3f} ms per round"
            + (f"; {e['head_decodes']} head decodes for {e['proposals']} proposals" if "head_decodes" in e else ""))
    for name, proj in s.get("bandwidth_bound_projection", {}).items():
        if proj:
            log(f"on a bandwidth-bound device (T(n) ~ T(1)) the {name} acceptance would give about "
                f"{proj['speedup']:.2f}x ({proj['tokens_per_round']:.2f} tokens per round, drafting = "
                f"{100 * proj['draft_over_target_token']:.0f}% of a target token here)")


def save(s: dict, path: Optional[Path]) -> None:
    if path is not None:
        Path(path).write_text(json.dumps(s, indent=1))


def chart(s: dict, path: Path) -> None:
    """PNG: tokens/s per method (with the speedup over plain) and acceptance per draft position."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the chart needs matplotlib: pip install matplotlib (or 'llama-eagle3[train]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(s["methods"])
    rates = [s["methods"][n]["tokens_per_second"] for n in names]
    bars = a.bar(names, rates, color=["#888888" if n in ("plain", "control") else "#3070b0" for n in names])
    plain = s["methods"].get("plain")
    if plain:
        for bar, r in zip(bars, rates):
            a.annotate(f"{r / plain['tokens_per_second']:.2f}x", (bar.get_x() + bar.get_width() / 2, r),
                       ha="center", va="bottom")
    a.set_ylabel("tokens/s")
    sampling = "greedy" if not s.get("temperature") else f"temperature {s['temperature']}"
    fig.suptitle(f"{s['n_prompts']} prompts, {s['max_tokens']} new tokens, {sampling}, {_where(s)}", fontsize=10)
    for name, e in s["speculative"].items():
        acc = e["acceptance_at"]
        if acc:
            b.plot(range(1, len(acc) + 1), acc, "o-", label=f"{name} (mean accepted length "
                                                            f"{e['mean_accepted_length']:.2f})")
    b.set_xticks(range(1, s["draft_max"] + 1))
    b.set_xlabel("draft position")
    b.set_ylabel("accepted (fraction of rounds)")
    b.set_ylim(0, 1)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
