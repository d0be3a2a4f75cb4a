"""Tiny models the tests build themselves: random-weight target GGUFs of several
architectures with a small byte-level BPE tokenizer, and random EAGLE-3 heads in
each HF checkpoint layout (safetensors writer and a torch-free .bin writer)."""

from __future__ import annotations

import io
import json
import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eagle3_convert.checkpoint import write_safetensors  # noqa: F401  (re-exported for tests)
from eagle3_convert.gguf_io import write_kv
from llama_eagle3.synthetic import byte_tokens

H, N_HEAD, N_KV, HEAD_DIM, FF, N_LAYER, CTX = 64, 4, 2, 16, 128, 8, 1024
HEAD_FF, DRAFT_VOCAB = 96, 128
CAPTURE_IDS = (2, 4, 5)  # "input of layer" ids used by the fixtures (defaults for N=8: 2, 4, 5)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizer_keys() -> dict:
    """A byte-level BPE vocabulary: 256 bytes, a few English merges, chat specials."""
    tokens = byte_tokens()
    merges: list[str] = []
    for a, b in [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("a", "n"), ("o", "n"), ("Ġ", "a"),
                 ("r", "e"), ("e", "n"), ("Ġ", "s"), ("o", "r"), ("Ġ", "w"), ("a", "t"), ("i", "s"), ("Ġ", "c"),
                 ("Ġ", "i"), ("e", "s"), ("i", "t"), ("Ġ", "o"), ("l", "l"), ("Ġ", "b"), ("Ġ", "f"), ("Ġ", "m")]:
        merges.append(f"{a} {b}")
        tokens.append(a + b)
    types_ = [1] * len(tokens)
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]:
        tokens.append(special)
        types_.append(3)
    eos = tokens.index("<|im_end|>")
    return {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types_, "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": tokens.index("<|endoftext|>"), "tokenizer.ggml.eos_token_id": eos,
        "tokenizer.ggml.add_bos_token": False, "tokenizer.chat_template": CHAT_TEMPLATE,
    }


def build_target(path: Path, arch: str, seed: int = 0) -> Path:
    """A random target GGUF of `arch` (llama, qwen2, gemma3) with peaked logits."""
    import gguf

    rng = np.random.default_rng(seed)
    tok = tokenizer_keys()
    V = len(tok["tokenizer.ggml.tokens"])
    w = gguf.GGUFWriter(str(path), arch)
    for k, v in {
        "context_length": CTX, "embedding_length": H, "block_count": N_LAYER, "feed_forward_length": FF,
        "attention.head_count": N_HEAD, "attention.head_count_kv": N_KV, "rope.dimension_count": HEAD_DIM,
        "attention.key_length": HEAD_DIM, "attention.value_length": HEAD_DIM,
        "attention.layer_norm_rms_epsilon": 1e-6, "rope.freq_base": 10000.0, "vocab_size": V,
    }.items():
        write_kv(w, f"{arch}.{k}", v)
    for k, v in tok.items():
        write_kv(w, k, v)

    def mat(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        # Q8_0 like the GGUFs people run; llama.cpp's quantized matmuls give the same row
        # whatever the batch size, which f32/f16 kernels do not guarantee
        a = (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)
        return gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)

    def ones(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    q8 = gguf.GGMLQuantizationType.Q8_0
    add = w.add_tensor

    def add_tensor(name: str, a: np.ndarray) -> None:
        add(name, a, raw_dtype=q8 if a.dtype == np.uint8 else None)

    w.add_tensor = add_tensor
    w.add_tensor("token_embd.weight", (rng.standard_normal((V, H))).astype(np.float32))
    w.add_tensor("output_norm.weight", ones(H))
    w.add_tensor("output.weight", mat(V, H, 4.0))
    for i in range(N_LAYER):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", ones(H))
        w.add_tensor(b + "attn_q.weight", mat(N_HEAD * HEAD_DIM, H))
        w.add_tensor(b + "attn_k.weight", mat(N_KV * HEAD_DIM, H))
        w.add_tensor(b + "attn_v.weight", mat(N_KV * HEAD_DIM, H))
        w.add_tensor(b + "attn_output.weight", mat(H, N_HEAD * HEAD_DIM))
        w.add_tensor(b + "ffn_norm.weight", ones(H))
        w.add_tensor(b + "ffn_gate.weight", mat(FF, H))
        w.add_tensor(b + "ffn_up.weight", mat(FF, H))
        w.add_tensor(b + "ffn_down.weight", mat(H, FF))
        if arch == "qwen2":
            for t, n in (("q", N_HEAD), ("k", N_KV), ("v", N_KV)):
                w.add_tensor(b + f"attn_{t}.bias", (0.1 * rng.standard_normal(n * HEAD_DIM)).astype(np.float32))
        if arch == "gemma3":
            w.add_tensor(b + "attn_q_norm.weight", ones(HEAD_DIM))
            w.add_tensor(b + "attn_k_norm.weight", ones(HEAD_DIM))
            w.add_tensor(b + "post_attention_norm.weight", ones(H))
            w.add_tensor(b + "post_ffw_norm.weight", ones(H))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---- HF heads -------------------------------------------------------------------------

@dataclass
class HeadSpec:
    layout: str                 # specforge | angelslim | speculators | eagle
    fmt: str = "safetensors"    # or "bin"
    norm_before_fc: bool = False
    norm_before_residual: bool = False
    own_embeddings: bool = False
    full_vocab: bool = False    # no d2t: draft vocabulary == target vocabulary
    own_lm_head: bool = True    # False: share the target's output matrix (needs full_vocab)


def random_head_tensors(spec: HeadSpec, n_vocab: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Canonical-name tensors (HF orientation) of a random head; d2t as HF offsets."""
    rng = np.random.default_rng(seed)
    Vd = n_vocab if spec.full_vocab else DRAFT_VOCAB

    def mat(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t = {
        "fc.weight": mat(H, 3 * H), "norm.weight": ones(H), "lm_head.weight": mat(Vd, H, 4.0),
        "L.input_layernorm.weight": ones(H), "L.hidden_norm.weight": ones(H),
        "L.self_attn.q_proj.weight": mat(N_HEAD * HEAD_DIM, 2 * H), "L.self_attn.k_proj.weight": mat(N_KV * HEAD_DIM, 2 * H),
        "L.self_attn.v_proj.weight": mat(N_KV * HEAD_DIM, 2 * H), "L.self_attn.o_proj.weight": mat(H, N_HEAD * HEAD_DIM),
        "L.post_attention_layernorm.weight": ones(H), "L.mlp.gate_proj.weight": mat(HEAD_FF, H),
        "L.mlp.up_proj.weight": mat(HEAD_FF, H), "L.mlp.down_proj.weight": mat(H, HEAD_FF),
    }
    if not spec.full_vocab:
        ids = np.sort(rng.choice(n_vocab, size=Vd, replace=False)).astype(np.int64)
        t["d2t"] = ids - np.arange(Vd)
        mask = np.zeros(n_vocab, dtype=bool)
        mask[ids] = True
        t["t2d"] = mask
    if not spec.own_lm_head:
        del t["lm_head.weight"]
    if spec.norm_before_fc:
        t["input_norm.weight"] = ones(3 * H)
    if spec.own_embeddings:
        t["embed_tokens.weight"] = rng.standard_normal((n_vocab, H)).astype(np.float32)
    return t


def head_config(spec: HeadSpec, n_vocab: int) -> dict:
    Vd = n_vocab if spec.full_vocab else DRAFT_VOCAB
    core = {"hidden_size": H, "intermediate_size": HEAD_FF, "num_attention_heads": N_HEAD,
            "num_key_value_heads": N_KV, "num_hidden_layers": 1, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "vocab_size": n_vocab, "max_position_embeddings": CTX, "head_dim": HEAD_DIM}
    output_ids = [i - 1 for i in CAPTURE_IDS]
    if spec.layout == "speculators":
        return {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
                "transformer_layer_config": core, "draft_vocab_size": Vd, "target_hidden_size": H,
                "norm_before_residual": spec.norm_before_residual, "norm_before_fc": spec.norm_before_fc,
                "eagle_aux_hidden_state_layer_ids": list(CAPTURE_IDS)}
    cfg = {**core, "draft_vocab_size": Vd, "target_hidden_size": H,
           "norm_before_residual": spec.norm_before_residual}
    if spec.layout == "specforge":
        cfg.update(architectures=["LlamaForCausalLMEagle3"], eagle_config={"eagle_aux_hidden_state_layer_ids": output_ids})
    elif spec.layout == "angelslim":
        cfg.update(architectures=["Eagle3LlamaForCausalLM"], eagle_aux_hidden_state_layer_ids=output_ids)
    else:
        cfg.update(architectures=["LlamaForCausalLM"])  # official EAGLE: no ids, defaults [2, N//2, N-3]
    return cfg


def write_torch_bin(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """torch.save's zip format, written without torch (fake torch modules while pickling)."""
    torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")
    storages = {np.dtype(t): name for t, name in [(np.float32, "FloatStorage"), (np.float16, "HalfStorage"),
                                                  (np.float64, "DoubleStorage"), (np.int64, "LongStorage"),
                                                  (np.int32, "IntStorage"), (np.uint8, "ByteStorage"),
                                                  (np.bool_, "BoolStorage")]}
    for s in storages.values():
        setattr(torch_mod, s, type(s, (), {"__module__": "torch", "__qualname__": s}))

    def _rebuild_tensor_v2(*args):  # pragma: no cover - only referenced by name
        raise NotImplementedError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch_mod._utils = utils_mod

    class Storage:
        def __init__(self, key: str, a: np.ndarray):
            self.key, self.a = key, a

    class Tensor:
        def __init__(self, st: Storage, shape: tuple):
            self.st, self.shape = st, shape

        def __reduce__(self):
            stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
            return (_rebuild_tensor_v2, (self.st, 0, self.shape, stride, False, OrderedDict()))

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", getattr(torch_mod, storages[obj.a.dtype]), obj.key, "cpu", obj.a.size)
            return None

    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch_mod, utils_mod
    try:
        buf = io.BytesIO()
        objs = OrderedDict((n, Tensor(Storage(str(i), a), a.shape)) for i, (n, a) in enumerate(tensors.items()))
        P(buf, protocol=2).dump(objs)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        for i, a in enumerate(tensors.values()):
            z.writestr(f"archive/data/{i}", np.ascontiguousarray(a).tobytes())


def write_hf_head(directory: Path, spec: HeadSpec, tensors: dict[str, np.ndarray], config: dict) -> Path:
    """Writes canonical-name tensors ("L." = the decoder layer) and a config in spec's layout and format."""
    directory.mkdir(parents=True, exist_ok=True)
    prefix = "layers.0." if spec.layout in ("speculators", "angelslim") else "midlayer."
    tensors = {(prefix + k[2:] if k.startswith("L.") else k): v for k, v in tensors.items()}
    (directory / "config.json").write_text(json.dumps(config, allow_nan=True))
    if spec.fmt == "bin":
        write_torch_bin(directory / "pytorch_model.bin", tensors)
    else:
        write_safetensors(directory / "model.safetensors", tensors)
    return directory


def build_hf_head(directory: Path, spec: HeadSpec, n_vocab: int, seed: int = 1) -> Path:
    return write_hf_head(directory, spec, random_head_tensors(spec, n_vocab, seed), head_config(spec, n_vocab))
