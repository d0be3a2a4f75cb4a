"""Streaming chat on SmolLM2-135M-Instruct: plain llama-cpp-python vs llama_eagle3, same prompt.

    python examples/demo.py [--head head.gguf] [--prompt "..."] [--max-tokens 200]

Prints both answers' tokens/s, the mean accepted length and whether the outputs are identical.
Without --head it uses the head this project ships for SmolLM2 (heads/smollm2-135m-instruct,
trained with `llama-eagle3 train`, packaged with llama_eagle3); --random-head uses an untrained one instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import llama_cpp
from eagle3_convert.cli import convert
from eagle3_convert.random_head import SMOLLM2_135M, write_random_head
from llama_eagle3 import Llama
from llama_eagle3.defaults import default_head, smollm2_path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"


def random_head(target: Path) -> Path:
    """An untrained head with SmolLM2's shapes, converted like a downloaded one."""
    out = CACHE / "smollm2-random-head.gguf"
    if not out.exists():
        hf = write_random_head(CACHE / "smollm2-random-head", **SMOLLM2_135M)
        convert(hf, str(target), out, "f16")
    return out


def stream(llm: llama_cpp.Llama, messages: list[dict], max_tokens: int, label: str) -> tuple[str, int, float]:
    print(f"\n--- {label} ---", flush=True)
    text, n, t0 = [], 0, time.perf_counter()
    for chunk in llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0.0, stream=True):
        piece = chunk["choices"][0]["delta"].get("content", "")
        if piece:
            n += 1
            text.append(piece)
            print(piece, end="", flush=True)
    dt = time.perf_counter() - t0
    print()
    return "".join(text), n, dt


def explain(policy: dict) -> str:
    """One line on what this machine charges for speculation and what would pay here, from the
    costs and acceptance the draft policy measured (Llama.speculative_stats()["policy"])."""
    t = {int(n): ms for n, ms in policy["decode_ms"].items()}
    step, breakeven, alpha = policy["draft_step_ms"], policy["breakeven_alpha"], policy["alpha"][0]
    if 1 not in t or 2 not in t or step is None:
        return "this machine's costs were not measured (speculation off from the start)"
    charge = (f"this machine charges: verifying 2 tokens = {t[2] / t[1]:.2f} plain tokens, a head step = "
              f"{step / t[1]:.0%} of one")
    if breakeven == "none pays" or (isinstance(breakeven, float) and breakeven > 0.9):
        need = "no acceptance pays" if breakeven == "none pays" else f"only acceptance >= {breakeven:.2f} pays"
        return (f"{charge}; {need} (this head: {alpha:.2f} at the first position), so auto decodes plainly. "
                f"A small target on a CPU cannot gain; an 8B target at acceptance 0.8 would be measured by "
                f"`llama-eagle3 bench --synthetic llama-8b --simulate-acceptance 0.8`")
    return f"{charge}; drafts pay from acceptance {breakeven} (this head: {alpha:.2f} at the first position)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head", type=Path, default=None, help="EAGLE-3 head GGUF for SmolLM2 (default: the shipped one)")
    p.add_argument("--random-head", action="store_true", help="use an untrained head (machinery only)")
    p.add_argument("--draft-max", type=int, default=4)
    p.add_argument("--fixed", action="store_true", help="draft --draft-max tokens every round (no adaptive policy)")
    p.add_argument("--prompt", default="Write a short story about a robot who learns to paint.")
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    try:
        target = smollm2_path()
        head = random_head(target) if a.random_head else (a.head or default_head())
    except FileNotFoundError as e:
        sys.exit(str(e))
    if not head.exists():
        sys.exit(f"no head at {head}: pass --head, or --random-head to see the machinery with an untrained one")
    common = dict(n_ctx=2048, n_threads=a.threads, verbose=False, flash_attn=True)
    plain = llama_cpp.Llama(str(target), **common)
    spec = Llama(str(target), eagle3_head=str(head), eagle3_draft_max=a.draft_max, eagle3_adaptive=not a.fixed,
                 **common)
    messages = [{"role": "user", "content": a.prompt}]
    stream(plain, messages, 8, "warm-up")
    spec.create_chat_completion(messages, max_tokens=8, temperature=0.0)
    spec.reset_speculative_stats()

    text_a, n_a, t_a = stream(plain, messages, a.max_tokens, "plain llama-cpp-python")
    text_b, n_b, t_b = stream(spec, messages, a.max_tokens, f"EAGLE-3 ({head.name})")
    s = spec.speculative_stats()
    print("\n=== results (SmolLM2-135M-Instruct Q4_1, greedy, "
          f"{a.threads} threads, {a.max_tokens} max tokens) ===")
    # llama-cpp-python streams one chunk per generated token (a split UTF-8 character waits)
    print(f"plain:   {n_a / t_a:7.1f} tokens/s  ({n_a} streamed chunks in {t_a:.2f} s)")
    print(f"EAGLE-3: {n_b / t_b:7.1f} tokens/s  ({n_b} streamed chunks in {t_b:.2f} s)   speed-up {t_a / t_b:.2f}x")
    print(f"mean accepted length {s['mean_accepted_length']:.2f} over {s['rounds']} verify rounds "
          f"({s['drafted']} drafted, {s['accepted']} accepted, {s['plain_steps']} plain steps); "
          f"acceptance per position {[round(x, 2) for x in s['acceptance_at']]}")
    print(f"draft policy: {s['policy']} ({s['probes']} probe drafts while speculation was off, "
          f"{s['fallback_steps']} tokens decoded by the plain fallback)")
    print(explain(s["policy"]))
    print(f"outputs identical: {text_a == text_b}")
    if a.random_head:
        print("note: random head, so drafts are rarely confident enough to be tried; train or convert a real head")
    sys.exit(0 if text_a == text_b else 1)


if __name__ == "__main__":
    main()
