"""An untrained EAGLE-3 head with a target's shapes, written as a SpecForge checkpoint.

For demos and tests that need a head in the real format before a trained one exists:
it exercises conversion and the whole runtime, and drafts (almost) nothing useful.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from .checkpoint import write_safetensors


def write_random_head(directory: Path, hidden: int, n_head: int, n_kv_head: int, intermediate: int, vocab: int,
                      draft_vocab: int, rope_theta: float = 10000.0, seed: int = 0,
                      draft_ids: Optional[np.ndarray] = None) -> Path:
    """draft_ids: the sorted target ids of the draft vocabulary (default: draft_vocab random ones)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hd = hidden // n_head

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    ones = np.ones(hidden, np.float32)
    ids = np.sort(rng.choice(vocab, draft_vocab, replace=False)) if draft_ids is None else np.asarray(draft_ids)
    tensors = {
        "fc.weight": mat(hidden, 3 * hidden), "norm.weight": ones, "lm_head.weight": mat(draft_vocab, hidden),
        "midlayer.input_layernorm.weight": ones, "midlayer.hidden_norm.weight": ones,
        "midlayer.self_attn.q_proj.weight": mat(n_head * hd, 2 * hidden),
        "midlayer.self_attn.k_proj.weight": mat(n_kv_head * hd, 2 * hidden),
        "midlayer.self_attn.v_proj.weight": mat(n_kv_head * hd, 2 * hidden),
        "midlayer.self_attn.o_proj.weight": mat(hidden, n_head * hd),
        "midlayer.post_attention_layernorm.weight": ones,
        "midlayer.mlp.gate_proj.weight": mat(intermediate, hidden), "midlayer.mlp.up_proj.weight": mat(intermediate, hidden),
        "midlayer.mlp.down_proj.weight": mat(hidden, intermediate),
        "d2t": (ids - np.arange(draft_vocab)).astype(np.int64),  # HF stores offsets
    }
    write_safetensors(directory / "model.safetensors", tensors)
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLMEagle3"], "hidden_size": hidden, "intermediate_size": intermediate,
        "num_attention_heads": n_head, "num_key_value_heads": n_kv_head, "num_hidden_layers": 1,
        "rms_norm_eps": 1e-5, "rope_theta": rope_theta, "vocab_size": vocab, "draft_vocab_size": draft_vocab,
        "max_position_embeddings": 8192}))
    return directory


# SmolLM2-135M-Instruct: hidden 576, 9 heads, 3 KV heads, vocabulary 49152, rope theta 100000
SMOLLM2_135M = dict(hidden=576, n_head=9, n_kv_head=3, intermediate=1536, vocab=49152, draft_vocab=4096,
                    rope_theta=100000.0)


def main(argv: Optional[list[str]] = None) -> int:
    """python -m eagle3_convert.random_head --kind dflash|eagle3 --like smollm2-135m|qwen3-8b --out DIR"""
    import argparse

    from .random_dflash import QWEN3_8B_DFLASH, SMOLLM2_135M_DFLASH, shape_summary, write_random_dflash_head

    p = argparse.ArgumentParser(prog="python -m eagle3_convert.random_head",
                                description="Write an untrained head checkpoint at a target's shapes (for demos "
                                            "and tests: it drafts nothing useful). Convert it with "
                                            "convert-eagle3-gguf.")
    p.add_argument("--kind", choices=["eagle3", "dflash"], required=True,
                   help="eagle3: a SpecForge EAGLE-3 checkpoint; dflash: a z-lab DFlash checkpoint")
    p.add_argument("--like", choices=["smollm2-135m", "qwen3-8b"], default="smollm2-135m",
                   help="the target whose shapes the head takes (qwen3-8b: DFlash only, "
                        "z-lab/Qwen3-8B-DFlash-b16's shape, about 2 GB in bf16)")
    p.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32", help="DFlash: the stored type")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="the checkpoint directory to write")
    a = p.parse_args(argv)
    if a.kind == "eagle3":
        if a.like != "smollm2-135m" or a.dtype != "f32":
            p.error("--kind eagle3 writes SmolLM2-135M's shape in f32 only")
        write_random_head(a.out, **SMOLLM2_135M, seed=a.seed)  # type: ignore[arg-type]
        print(f"wrote a random EAGLE-3 head (SpecForge layout, SmolLM2-135M shape) to {a.out}")
        return 0
    shape = SMOLLM2_135M_DFLASH if a.like == "smollm2-135m" else QWEN3_8B_DFLASH
    write_random_dflash_head(a.out, shape, a.dtype, a.seed)
    print(f"wrote a random DFlash head (z-lab layout, {a.dtype}; {shape_summary(shape)}) to {a.out}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
