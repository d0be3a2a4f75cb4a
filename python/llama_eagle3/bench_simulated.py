"""`llama-eagle3 bench --simulate-acceptance 0.5,0.7,0.9`: real costs, simulated acceptance.

Answers "how much faster would EAGLE-3 be on this machine with this model, for a head that
accepts alpha": every method runs its real rounds (the head drafts, the target decodes the verify
batch, the sampler samples the rows), but each draft position is accepted with the given
probability (verifier.SimulatedAcceptance), so committed text is meaningless and every time is
real. With --synthetic the model and head are random ones of a published size (synthetic.py).

Methods, interleaved prompt by prompt (the order rotates) on two instances: plain
llama-cpp-python, and one EAGLE-3 instance that runs a fixed chain of k = 1..draft_max every
round (chain-k) and the adaptive policy (auto, chains only: a tree's acceptance is not defined
by per-position probabilities) by swapping its draft policy; every run starts from an empty
cache and generates greedily from the chat prompt's tokens (timed_generation). Auto starts each
alpha from its calibration, as a fresh process would. Rates are decoding rates: tokens after
the first over the time from the first token to the last, so that the prompt's prefill (the
same batches for every method; on a CPU with an 8B target it takes longer than the
generation) does not dilute the ratios; end-to-end rates are in the JSON too. Next to each
measured rate the cost model's prediction E(k) / (T(k+1) + k c), from the T(n) and head step c
measured in the same run (decode and head time only: sampling and the loop are not in it).

Upstream llama.cpp's C++ EAGLE-3 cannot be given simulated acceptance: it runs once per n-max
with its real acceptance (~0 with a random head: every round commits one token, so its rate is
its cost per round) on the first UPSTREAM_PROMPTS prompts, and is projected to each alpha as
that rate times E(k), labelled projected.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import llama_cpp

from .bench import Upstream, device_info
from .costs import CostTable
from .fallback import Fallback
from .llama import Llama
from .policy import DraftPolicy
from .stats import SpeculativeStats
from .prompts import load_prompts, rendered_prompt
from .verifier import SimulatedAcceptance

UPSTREAM_PROMPTS = 2  # prompts upstream runs per n-max (one process each)


def parse_acceptance(spec: str) -> list[list[float]]:
    """'0.5,0.7,0.9' -> [[0.5], [0.7], [0.9]]; '0.73/0.71/0.67' -> one per-position list."""
    out = []
    for item in (s for s in spec.split(",") if s.strip()):
        try:
            alphas = [float(a) for a in item.split("/")]
        except ValueError:
            raise ValueError(f"--simulate-acceptance takes probabilities such as 0.5,0.7 or 0.73/0.71/0.67, "
                             f"got {item!r}") from None
        SimulatedAcceptance(alphas)  # validates
        out.append(alphas)
    if not out:
        raise ValueError("--simulate-acceptance needs at least one probability")
    return out


def _label(alphas: list[float]) -> str:
    return "/".join(f"{a:g}" for a in alphas)


@dataclass
class Timing:
    """Generations, summed: tokens, of them decoded after the first one (n - 1 per generation),
    prefill seconds (start to the first token: the prompt's decode and the first sample) and
    decode seconds (first token to last)."""
    n: int = 0
    decoded: int = 0
    prefill: float = 0.0
    decode: float = 0.0

    def __add__(self, o: "Timing") -> "Timing":
        return Timing(self.n + o.n, self.decoded + o.decoded, self.prefill + o.prefill, self.decode + o.decode)

    @property
    def decode_rate(self) -> float:
        """Tokens/s after the first token of each generation."""
        return self.decoded / self.decode if self.decode > 0 else 0.0

    @property
    def end_to_end_rate(self) -> float:
        return self.n / (self.prefill + self.decode) if self.prefill + self.decode > 0 else 0.0


def prompt_tokens(llm: llama_cpp.Llama, messages: list[dict]) -> list[int]:
    """The chat prompt's tokens as llama-cpp-python's chat completion evaluates them (the chat
    template renders the special tokens, so none is added); a model without a chat template gets
    the messages' contents, one per line."""
    if "tokenizer.chat_template" in llm.metadata:
        return llm.tokenize(rendered_prompt(llm, messages).encode(), add_bos=False, special=True)
    return llm.tokenize("\n".join(m["content"] for m in messages).encode(), add_bos=True, special=False)


def timed_generation(llm: llama_cpp.Llama, tokens: list[int], max_tokens: int, clock=time.perf_counter) -> Timing:
    """Greedy generation of up to max_tokens after tokens from an empty cache (stops at an
    end-of-generation token, as a completion does), timed at the first and the last token."""
    llm.reset()
    n, t0 = 0, clock()
    t_first = t0
    for token in llm.generate(tokens, temp=0.0, reset=True):
        n += 1
        if n == 1:
            t_first = clock()
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or n >= max_tokens:
            break
    return Timing(n, max(n - 1, 0), t_first - t0, clock() - t_first)


class _SpecMethods:
    """One drafter's instance running fixed lengths 1..K and auto by swapping its policy and stats:
    an EAGLE-3 head's chains (chain-k, auto) or a DFlash head's blocks of k drafts (dflash-k,
    dflash-auto: one head decode per proposal, priced per proposal)."""

    def __init__(self, llm: Llama, k_max: int, prefix: str = ""):
        self.llm, self.k_max = llm, k_max
        self.calibrated = copy.deepcopy(llm._policy)  # auto right after start-up calibration
        fixed = f"{prefix}-" if prefix else "chain-"
        self.fixed = [f"{fixed}{k}" for k in range(1, k_max + 1)]
        self.auto = f"{prefix}-auto" if prefix else "auto"
        self.names = self.fixed + [self.auto]

    def start(self, label: str) -> None:
        """Fresh policies, stats and acceptance draws for one simulated alpha."""
        per_proposal = self.calibrated.costs.per_proposal
        self.policies = {name: DraftPolicy(k, adaptive=False, costs=CostTable(per_proposal))
                         for k, name in enumerate(self.fixed, 1)}
        self.policies[self.auto] = copy.deepcopy(self.calibrated)
        self.stats = {name: SpeculativeStats() for name in self.names}
        self.fallbacks = {name: Fallback() for name in self.names}
        self.label = label

    def run(self, name: str, alphas: list[float], tokens: list[int], max_tokens: int, seed: int) -> Timing:
        sim = SimulatedAcceptance(alphas, seed=f"{self.label}/{name}/{seed}")
        self.llm._bench_configure(self.policies[name], sim, self.stats[name], self.fallbacks[name])
        return timed_generation(self.llm, tokens, max_tokens)

    def costs(self) -> tuple[dict[int, float], Optional[float], dict[int, float]]:
        """Costs measured in this alpha's runs (ms): T(n) (T(k+1) from the fixed length k, T(1) from
        auto: calibration and its refreshes), the drafter's step (a head step, or a proposal's
        median for a DFlash head) and, per proposal length, a DFlash proposal's cost."""
        decode_ms: dict = dict(self.policies[self.auto].snapshot()["decode_ms"])
        steps, proposals = [], {}
        for k, name in enumerate(self.fixed, 1):
            snap = self.policies[name].snapshot()
            decode_ms.update({n: ms for n, ms in snap["decode_ms"].items() if n > 1})
            if snap["draft_step_ms"] is not None:
                steps.append(snap["draft_step_ms"])
                proposals[k] = snap["draft_step_ms"]
        return decode_ms, (statistics.median(steps) if steps else None), proposals


def predicted_rate(decode_ms: dict, draft_ms: Optional[float], sim: SimulatedAcceptance, k: int) -> Optional[float]:
    """E(k) / (T(k+1) + d) in tokens/s from measured costs (ms), d the drafting time of k drafts
    (k head steps, or one DFlash proposal); None where one is missing."""
    t = decode_ms.get(k + 1)
    if t is None or (k > 0 and draft_ms is None):
        return None
    return 1e3 * sim.expected_tokens(k) / (t + (draft_ms if k > 0 else 0.0))


def simulated_bench(model: str, head: str, prompts_file: Path, acceptance: list[list[float]],
                    max_tokens: int = 128, draft_max: int = 4, threads: int = 2, n_ctx: int = 2048,
                    n_gpu_layers: int = 0, max_prompts: Optional[int] = None, upstream: Optional[Path] = None,
                    upstream_n_max: tuple[int, ...] = (), dflash_head: Optional[str] = None, log=print) -> dict:
    """Returns the summary: per alpha label, decoding tokens/s per method (measured), the cost model's
    prediction, the best fixed shape (plain counts) and each auto's ratio to it. dflash_head: a
    DFlash head run next to `head` (dflash-1..draft_max, dflash-auto)."""
    if draft_max < 1:
        raise ValueError(f"--draft-max must be >= 1 for a simulated bench, got {draft_max}")
    if upstream_n_max and (upstream is None or not Path(upstream).is_file()):
        raise ValueError(f"--upstream must be the path of llama-speculative-simple, got {upstream}")
    convs = load_prompts(prompts_file)[:max_prompts]
    common = dict(n_ctx=n_ctx, n_threads=threads, n_gpu_layers=n_gpu_layers, verbose=False, flash_attn=True)
    plain = llama_cpp.Llama(model, **common)

    def drafter(path: str, prefix: str) -> _SpecMethods:
        return _SpecMethods(Llama(model, eagle3_head=path, eagle3_draft_max=draft_max, eagle3_p_min=0.0,
                                  eagle3_tree_width=1, **common), draft_max, prefix)
    specs = [drafter(head, "")] + ([drafter(dflash_head, "dflash")] if dflash_head else [])
    order = ["plain"] + [name for spec in specs for name in spec.names]
    owner = {name: spec for spec in specs for name in spec.names}
    for llm in [plain] + [spec.llm for spec in specs]:  # warm-up
        timed_generation(llm, prompt_tokens(plain, [{"role": "user", "content": "Hi"}]), 8)
    summary: dict = {"model": model, "head": head, "dflash_head": dflash_head, "prompts": str(prompts_file),
                     "n_prompts": len(convs), "max_tokens": max_tokens, "draft_max": draft_max, "threads": threads,
                     "n_gpu_layers": n_gpu_layers, "device": device_info(), "methods": order,
                     "calibration": {spec.auto: spec.calibrated.snapshot() for spec in specs}, "simulated": {}}
    prompts = [prompt_tokens(plain, messages) for messages in convs]
    for alphas in acceptance:
        label = _label(alphas)
        for spec in specs:
            spec.start(label)
        timing = {m: Timing() for m in order}
        for i, tokens in enumerate(prompts):
            rot = order[i % len(order):] + order[: i % len(order)]
            for name in rot:
                if name == "plain":
                    timing[name] += timed_generation(plain, tokens, max_tokens)
                else:
                    timing[name] += owner[name].run(name, alphas, tokens, max_tokens, i)
        summary["simulated"][label] = _alpha_summary(alphas, order, timing, specs)
        log(f"simulated acceptance {label}: " + "  ".join(
            f"{m} {summary['simulated'][label]['tokens_per_second'][m]:.1f}" for m in order) + " tok/s")
    if upstream_n_max:
        # its cost per round needs few prompts, and each of its runs loads the model again
        summary["upstream"] = _upstream(upstream, model, head, convs[:UPSTREAM_PROMPTS], max_tokens, threads, n_ctx,
                                        n_gpu_layers, upstream_n_max, plain, summary["simulated"])
    return summary


def _alpha_summary(alphas: list[float], order: list[str], timing: dict[str, Timing], specs: list[_SpecMethods]) -> dict:
    sim = SimulatedAcceptance(alphas)
    rate = {m: timing[m].decode_rate for m in order}
    predicted: dict = {}
    costs: dict = {}
    for spec in specs:
        decode_ms, step, proposals = spec.costs()
        per_proposal = spec.calibrated.costs.per_proposal
        predicted.setdefault("plain", predicted_rate(decode_ms, None, sim, 0))
        for k, name in enumerate(spec.fixed, 1):
            predicted[name] = predicted_rate(decode_ms, proposals.get(k) if per_proposal else
                                             None if step is None else k * step, sim, k)
        known = [predicted[n] for n in ["plain", *spec.fixed] if predicted.get(n) is not None]
        predicted[spec.auto] = max(known) if known else None  # the model's own optimum
        costs[spec.auto] = {"decode": decode_ms, "draft_step": step,
                            "proposal": proposals if per_proposal else None}
    # each drafter's auto against the best of plain and that drafter's fixed lengths
    bests = {spec.auto: max(["plain", *spec.fixed], key=lambda m: rate[m]) for spec in specs}
    best = bests[specs[0].auto]
    stats = {m: spec.stats[m].as_dict() for spec in specs for m in spec.names}
    autos = {spec.auto: {k: stats[spec.auto][k] for k in ("rounds", "plain_steps", "fallback_steps", "probes", "drafted_at")}
             for spec in specs}
    return {"simulated": True, "acceptance": alphas,
            "expected_tokens": {k: round(sim.expected_tokens(k), 4) for k in range(specs[0].k_max + 1)},
            "tokens_per_second": rate, "predicted_tokens_per_second": predicted,
            "end_to_end_tokens_per_second": {m: timing[m].end_to_end_rate for m in order},
            "prefill_seconds": {m: round(timing[m].prefill, 3) for m in order},
            "best_fixed": best, "auto_vs_best_fixed": rate[specs[0].auto] / rate[best],
            "best_fixed_per_drafter": bests,
            "autos_vs_best_fixed": {auto: rate[auto] / rate[m] for auto, m in bests.items()},
            "costs_ms": costs[specs[0].auto], "drafter_costs_ms": costs,
            "mean_accepted_length": {m: round(stats[m]["mean_accepted_length"], 3) for m in stats},
            "auto": autos[specs[0].auto], "autos": autos,
            "auto_policy": {spec.auto: spec.policies[spec.auto].snapshot() for spec in specs}}


def _upstream(binary: Path, model: str, head: str, convs: list, max_tokens: int, threads: int, n_ctx: int,
              n_gpu_layers: int, n_maxes: tuple[int, ...], template: llama_cpp.Llama, simulated: dict) -> dict:
    """Upstream at each n-max with its real acceptance (p_min 0: it drafts n-max every round), and
    its decoding rate (its own "decoded" timing, the prompt apart) projected to each simulated
    alpha: measured rate x E(k) / measured tokens per round."""
    out = {}
    for k in n_maxes:
        up = Upstream(binary, model, head, k, threads, n_ctx, n_gpu_layers, template, p_min=0.0)
        n_tok, sec, drafted, accepted = 0, 0.0, 0, 0
        for i, messages in enumerate(convs):
            _, n, _, counts = up.run(messages, max_tokens, 0.0, i)
            n_tok, sec = n_tok + n, sec + counts["decode_seconds"]
            drafted, accepted = drafted + counts.get("n_drafted", 0), accepted + counts.get("n_accept", 0)
        rounds = drafted / k if drafted else n_tok
        per_round = n_tok / max(rounds, 1)  # tokens committed per round at its real acceptance
        measured = n_tok / sec
        out[f"upstream-n{k}"] = {
            "measured_tokens_per_second": measured, "real_acceptance": accepted / drafted if drafted else 0.0,
            "projected_tokens_per_second": {
                label: measured * SimulatedAcceptance(s["acceptance"]).expected_tokens(k) / per_round
                for label, s in simulated.items()}}
    return out


def print_simulated(s: dict, log=print) -> None:
    log(f"\nSIMULATED acceptance, real costs: {s['n_prompts']} prompts, {s['max_tokens']} max new tokens, "
        f"greedy, {s['threads']} threads, n_gpu_layers {s['n_gpu_layers']}; chain-k drafts k every round, auto "
        f"adapts (chains <= {s['draft_max']}); dflash-k: a DFlash block of k drafts every round, dflash-auto "
        f"adapts; tokens/s = decoding rate, after each generation's first token (the prompt's prefill apart; "
        f"end-to-end rates in the JSON); predicted = E(k) / (T(k+1) + drafting) from the costs measured in the run")
    for label, a in s["simulated"].items():
        plain = a["tokens_per_second"]["plain"]
        log(f"\nalpha {label} (simulated): E(k) = {list(a['expected_tokens'].values())}; measured T(n) ms "
            f"{a['costs_ms']['decode']}, head step {a['costs_ms']['draft_step']} ms")
        for name, c in a["drafter_costs_ms"].items():
            if c["proposal"] is not None:
                log(f"{name.split('-')[0]}: one proposal of k drafts, ms: {c['proposal']}")
        log(f"{'method':<16}{'tokens/s':>10}{'vs plain':>10}{'predicted':>11}{'MAL':>7}")
        for m, r in a["tokens_per_second"].items():
            p = a["predicted_tokens_per_second"].get(m)
            mal = a["mean_accepted_length"].get(m)
            log(f"{m:<16}{r:>10.1f}{r / plain:>9.2f}x{'' if p is None else f'{p:.1f}':>11}"
                f"{'' if mal is None else f'{mal:.2f}':>7}")
        for name, u in s.get("upstream", {}).items():
            pr = u["projected_tokens_per_second"][label]
            log(f"{name:<16}{pr:>10.1f}{pr / plain:>9.2f}x  (projected from {u['measured_tokens_per_second']:.1f} "
                f"tok/s at its real acceptance {u['real_acceptance']:.2f})")
        for name, au in a["autos"].items():
            log(f"best fixed shape: {a['best_fixed_per_drafter'][name]}; {name} / best fixed = "
                f"{a['autos_vs_best_fixed'][name]:.3f} "
                f"({name}: {au['rounds']} verify rounds, {au['plain_steps']} plain steps, {au['fallback_steps']} "
                f"tokens in the plain fallback, drafts per position "
                f"{au['drafted_at']})")
