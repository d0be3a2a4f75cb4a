"""The trained head as a SpecForge checkpoint (config.json + model.safetensors, loadable by
vLLM / SGLang) and, through the converter like any downloaded head, as head.gguf."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from eagle3_convert.checkpoint import write_safetensors
from eagle3_convert.cli import convert
from eagle3_convert.head import Eagle3Head

_LAYER = {
    "input_layernorm": "input_layernorm.weight", "hidden_norm": "hidden_norm.weight",
    "q_proj": "self_attn.q_proj.weight", "k_proj": "self_attn.k_proj.weight", "v_proj": "self_attn.v_proj.weight",
    "o_proj": "self_attn.o_proj.weight", "post_attention_layernorm": "post_attention_layernorm.weight",
    "gate_proj": "mlp.gate_proj.weight", "up_proj": "mlp.up_proj.weight", "down_proj": "mlp.down_proj.weight",
}


def write_specforge(head: Eagle3Head, out: Path) -> None:
    c = head.config
    tensors = {f"midlayer.{name}": getattr(head, f) for f, name in _LAYER.items()}
    tensors.update({"fc.weight": head.fc, "norm.weight": head.norm, "lm_head.weight": head.lm_head})
    if head.enc_norm is not None:
        tensors["input_norm.weight"] = head.enc_norm
    if head.d2t is not None:
        tensors["d2t"] = (head.d2t - np.arange(len(head.d2t))).astype(np.int64)  # HF stores offsets
        t2d = np.zeros(c.vocab_size, bool)
        t2d[head.d2t] = True
        tensors["t2d"] = t2d
    write_safetensors(out / "model.safetensors", {k: np.ascontiguousarray(v) for k, v in tensors.items()})
    (out / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama",
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim, "num_hidden_layers": 1, "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings, "vocab_size": c.vocab_size,
        "draft_vocab_size": c.draft_vocab_size, "target_hidden_size": c.target_hidden_size,
        "norm_before_residual": c.norm_before_residual, "norm_before_fc": c.norm_before_fc,
        "tie_word_embeddings": False,
        # SpecForge counts "output of layer i": llama.cpp's input-of id L is output of L-1
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": [int(i) - 1 for i in c.target_layers]},
    }, indent=1))


def export(head: Eagle3Head, target_gguf: str, out: Path, outtype: str, log=print) -> Path:
    write_specforge(head, out)
    gguf_path = out / "head.gguf"
    convert(out, target_gguf, gguf_path, outtype, log=log)
    return gguf_path
