"""Peak memory of convert-eagle3-gguf on a random head of a published head's real shape.

    python examples/convert_memory.py DIR [--preset llama3.1-8b] [--bin]
    /usr/bin/time -v convert-eagle3-gguf DIR/head --target DIR/target.gguf --outfile DIR/head.gguf

writes DIR/head (config.json + bf16 model.safetensors, generated one tensor at a time; with
--bin an fp16 pytorch_model.bin like the official EAGLE heads, generated in memory) and
DIR/target.gguf (the target's metadata and vocabulary only: the converter reads no target
weights unless the head lacks its lm_head). "Maximum resident set size" is the peak.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np

PRESETS = {
    # yuhuili/EAGLE3-LLaMA3.1-Instruct-8B's shapes (the Llama-3.1-8B target: 32 layers, vocabulary 128256)
    "llama3.1-8b": dict(hidden=4096, n_head=32, n_kv=8, ff=14336, vocab=128256, draft_vocab=32000, n_layer=32,
                        own_embed=False),
    # a Llama-3.3-70B-shaped head with its own token embedding (Llama 3.3 70B heads carry one)
    "llama3.3-70b": dict(hidden=8192, n_head=64, n_kv=8, ff=28672, vocab=128256, draft_vocab=32000, n_layer=80,
                         own_embed=True),
    # issue 23's two speculators heads (eagle3x: norm_output, norm_before_fc): a Mistral-Large-Instruct-2411
    # head (speculators 0.7.0.dev80, 3 taps) and a Qwen3-235B-A22B head (0.8.0.dev0, 4 taps [2, 46, 91, 93])
    "mistral-large-123b-speculators": dict(hidden=12288, n_head=96, n_kv=8, ff=28672, vocab=32768, draft_vocab=32000,
                                           n_layer=88, own_embed=False, taps=[2, 44, 85], version="0.7.0.dev80",
                                           verifier="mistralai/Mistral-Large-Instruct-2411", rope_theta=1000000.0),
    "qwen3-235b-speculators": dict(hidden=4096, n_head=64, n_kv=4, head_dim=128, ff=24576, vocab=151936,
                                   draft_vocab=32000, n_layer=94, own_embed=False, taps=[2, 46, 91, 93],
                                   version="0.8.0.dev0", verifier="Qwen/Qwen3-235B-A22B", rope_theta=1000000.0),
}
GEN_ROWS = 8192  # rows of a matrix generated at a time


def head_shapes(p: dict) -> dict[str, tuple[int, ...]]:
    h, hd = p["hidden"], p.get("head_dim", p["hidden"] // p["n_head"])
    q, kv, n = p["n_head"] * hd, p["n_kv"] * hd, len(p.get("taps", [0] * 3))
    shapes = {
        "fc.weight": (h, n * h), "norm.weight": (h,), "lm_head.weight": (p["draft_vocab"], h),
        "midlayer.input_layernorm.weight": (h,), "midlayer.hidden_norm.weight": (h,),
        "midlayer.self_attn.q_proj.weight": (q, 2 * h), "midlayer.self_attn.k_proj.weight": (kv, 2 * h),
        "midlayer.self_attn.v_proj.weight": (kv, 2 * h), "midlayer.self_attn.o_proj.weight": (h, q),
        "midlayer.post_attention_layernorm.weight": (h,), "midlayer.mlp.gate_proj.weight": (p["ff"], h),
        "midlayer.mlp.up_proj.weight": (p["ff"], h), "midlayer.mlp.down_proj.weight": (h, p["ff"]),
        "d2t": (p["draft_vocab"],),
    } | ({"embed_tokens.weight": (p["vocab"], h)} if p["own_embed"] else {})
    if "version" in p:  # speculators names its layer layers.0.; norm_before_fc adds input_norm
        shapes = {k.replace("midlayer.", "layers.0."): v for k, v in shapes.items()} | {"input_norm.weight": (n * h,)}
    return shapes


def speculators_config(p: dict) -> dict:
    """config.json as speculators writes it (Eagle3SpeculatorConfig), the issue-23 heads' flags."""
    return {
        "architectures": ["Eagle3DraftModel"], "speculators_model_type": "eagle3", "speculators_version": p["version"],
        "draft_vocab_size": p["draft_vocab"], "target_hidden_size": None, "norm_before_residual": True,
        "norm_before_fc": True, "fc_norm": False, "norm_output": True, "embed_requires_grad": False,
        "eagle_aux_hidden_state_layer_ids": p["taps"], "dtype": "bfloat16",
        "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                               "verifier": {"name_or_path": p["verifier"]}},
        "transformer_layer_config": {
            "model_type": "llama", "hidden_size": p["hidden"], "intermediate_size": p["ff"],
            "num_attention_heads": p["n_head"], "num_key_value_heads": p["n_kv"],
            "head_dim": p.get("head_dim", p["hidden"] // p["n_head"]), "num_hidden_layers": 1, "hidden_act": "silu",
            "rms_norm_eps": 1e-5, "rope_theta": p["rope_theta"], "max_position_embeddings": 131072,
            "vocab_size": p["vocab"], "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False},
    }


def _bf16(a: np.ndarray) -> bytes:
    return (a.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()


def write_head(d: Path, p: dict, seed: int = 0) -> None:
    """bf16 safetensors written tensor by tensor (the header first: offsets follow from the shapes)."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shapes = head_shapes(p)
    header, off = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * (8 if name == "d2t" else 2)
        header[name] = {"dtype": "I64" if name == "d2t" else "BF16", "shape": list(shape), "data_offsets": [off, off + size]}
        off += size
    raw = json.dumps(header).encode()
    with open(d / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in shapes.items():
            if name == "d2t":
                ids = np.sort(rng.choice(p["vocab"], p["draft_vocab"], replace=False))
                f.write((ids - np.arange(p["draft_vocab"])).astype("<i8").tobytes())
            elif len(shape) == 1:
                f.write(_bf16(np.ones(shape, np.float32)))
            else:
                for start in range(0, shape[0], GEN_ROWS):
                    rows = (min(GEN_ROWS, shape[0] - start), shape[1])
                    f.write(_bf16(rng.standard_normal(rows, dtype=np.float32) / np.sqrt(shape[1])))
    if "version" in p:
        (d / "config.json").write_text(json.dumps(speculators_config(p)))
        return
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLMEagle3"], "hidden_size": p["hidden"], "intermediate_size": p["ff"],
        "num_attention_heads": p["n_head"], "num_key_value_heads": p["n_kv"], "num_hidden_layers": 1,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "vocab_size": p["vocab"], "draft_vocab_size": p["draft_vocab"],
        "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}}))


def write_bin_head(d: Path, p: dict, seed: int = 0) -> None:
    """The same head as an fp16 torch zip checkpoint (tests/tiny_models.write_torch_bin)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import tiny_models

    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in head_shapes(p).items():
        if name == "d2t":
            ids = np.sort(rng.choice(p["vocab"], p["draft_vocab"], replace=False))
            tensors[name] = (ids - np.arange(p["draft_vocab"])).astype(np.int64)
        elif len(shape) == 1:
            tensors[name] = np.ones(shape, np.float16)
        else:
            tensors[name] = (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[1])).astype(np.float16)
    tiny_models.write_torch_bin(d / "pytorch_model.bin", tensors)


def write_target(path: Path, p: dict) -> None:
    """A llama GGUF with the target's metadata and a vocabulary of distinct tokens, and no tensors."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", p["n_layer"])
    w.add_uint32("llama.embedding_length", p["hidden"])
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", [f"<t{i}>" for i in range(p["vocab"])])
    w.add_array("tokenizer.ggml.token_type", [1] * p["vocab"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="llama3.1-8b")
    ap.add_argument("--bin", action="store_true", help="write an fp16 pytorch_model.bin instead")
    a = ap.parse_args()
    p = PRESETS[a.preset]
    write_head(a.dir / "head", p)
    if a.bin:
        (a.dir / "head" / "model.safetensors").unlink()
        write_bin_head(a.dir / "head", p)
    write_target(a.dir / "target.gguf", p)
    print(f"wrote {a.dir / 'head'} and {a.dir / 'target.gguf'}")


if __name__ == "__main__":
    main()
