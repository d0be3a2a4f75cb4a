"""Published EAGLE-3 heads' quirks (issue 16; docs/published-heads.md): one tiny random checkpoint
per quirk, with the names, shapes, dtypes and config keys the real ones have.

A quirk either converts (the converter's read-back reference check passes; for those marked
"llama.cpp" the converted head run by llama.cpp's eagle3 graph matches the NumPy reference; for a
few, greedy output with the head is identical to plain) or is refused with one ConversionError
line naming the feature."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

import tiny_models as tm
from eagle3_convert.cli import convert
from eagle3_convert.errors import ConversionError
from eagle3_convert.gguf_header import read_gguf_header
from eagle3_convert.gguf_io import read_head_gguf
from eagle3_convert.head import Eagle3Head
from eagle3_convert.reference import decode
from head_check import check_llama_cpp_matches_reference, rel

N_VOCAB = len(tm.tokenizer_keys()["tokenizer.ggml.tokens"])

# ---- checkpoints --------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    hidden: int = tm.H
    n_head: int = tm.N_HEAD
    n_kv: int = tm.N_KV
    head_dim: int = tm.HEAD_DIM
    ff: int = tm.HEAD_FF
    target_hidden: int = tm.H
    taps: int = 3
    draft_vocab: Optional[int] = tm.DRAFT_VOCAB  # None: the whole target vocabulary, no d2t


def head_tensors(s: Shape, n_vocab: int, seed: int = 5) -> dict[str, np.ndarray]:
    """A random head, canonical names ("L." = the decoder layer), HF orientation, d2t as offsets."""
    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    q, kv = s.n_head * s.head_dim, s.n_kv * s.head_dim
    vd = s.draft_vocab or n_vocab
    t = {
        "fc.weight": mat(s.hidden, s.taps * s.target_hidden), "norm.weight": ones(s.hidden),
        "lm_head.weight": mat(vd, s.hidden, 4.0),
        "L.input_layernorm.weight": ones(s.hidden), "L.hidden_norm.weight": ones(s.hidden),
        "L.self_attn.q_proj.weight": mat(q, 2 * s.hidden), "L.self_attn.k_proj.weight": mat(kv, 2 * s.hidden),
        "L.self_attn.v_proj.weight": mat(kv, 2 * s.hidden), "L.self_attn.o_proj.weight": mat(s.hidden, q),
        "L.post_attention_layernorm.weight": ones(s.hidden), "L.mlp.gate_proj.weight": mat(s.ff, s.hidden),
        "L.mlp.up_proj.weight": mat(s.ff, s.hidden), "L.mlp.down_proj.weight": mat(s.hidden, s.ff),
    }
    if s.draft_vocab:
        ids = np.sort(rng.choice(n_vocab, size=vd, replace=False)).astype(np.int64)
        t["d2t"] = ids - np.arange(vd)
        t["t2d"] = np.isin(np.arange(n_vocab), ids)
    return t


def head_config(layout: str, s: Shape, n_vocab: int) -> dict:
    """config.json as each trainer writes it (output-of ids for SpecForge/AngelSlim, input-of for speculators)."""
    core = {"hidden_size": s.hidden, "intermediate_size": s.ff, "num_attention_heads": s.n_head,
            "num_key_value_heads": s.n_kv, "num_hidden_layers": 1, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "vocab_size": n_vocab, "max_position_embeddings": tm.CTX, "head_dim": s.head_dim,
            "hidden_act": "silu", "model_type": "llama", "torch_dtype": "float32"}
    vd = s.draft_vocab or n_vocab
    if layout == "speculators":
        return {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
                "transformer_layer_config": core, "draft_vocab_size": vd, "target_hidden_size": s.target_hidden,
                "norm_before_residual": False, "eagle_aux_hidden_state_layer_ids": list(tm.CAPTURE_IDS)}
    cfg = {**core, "draft_vocab_size": vd, "target_hidden_size": s.target_hidden}
    output_ids = [i - 1 for i in tm.CAPTURE_IDS]
    if layout == "specforge":
        cfg.update(architectures=["LlamaForCausalLMEagle3"], eagle_config={"eagle_aux_hidden_state_layer_ids": output_ids})
    elif layout == "angelslim":
        cfg.update(architectures=["Eagle3LlamaForCausalLM"], eagle_aux_hidden_state_layer_ids=output_ids)
    else:
        cfg.update(architectures=["LlamaForCausalLM"])  # official EAGLE trainer: no ids stored
    return cfg


_PREFIX = {"speculators": "layers.0.", "angelslim": "layers.0.", "specforge": "midlayer.", "eagle": "midlayer."}


def _st_entry(a: np.ndarray, dtype: str) -> tuple[str, bytes]:
    """(safetensors dtype label, raw bytes); floating tensors stored as `dtype` (F32, F16, BF16)."""
    if a.dtype.kind != "f":
        return {np.dtype(np.int64): "I64", np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "U8"}[a.dtype], a.tobytes()
    if dtype == "BF16":
        return "BF16", (np.ascontiguousarray(a, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    return dtype, np.ascontiguousarray(a, {"F32": "<f4", "F16": "<f2"}[dtype]).tobytes()


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str = "F32",
                      labels: Optional[dict[str, str]] = None) -> None:
    """labels overrides a tensor's dtype label (quantized exports: F8_E4M3 codes stored as uint8)."""
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        label, raw = _st_entry(a, dtype)
        label = (labels or {}).get(name, label)
        header[name] = {"dtype": label, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


@dataclass(frozen=True)
class Files:
    fmt: str = "safetensors"   # or "bin" (torch zip)
    dtype: str = "F32"         # F32, F16, BF16 (safetensors); bin stores F32 or F16
    shards: int = 1
    prefix: Optional[str] = None  # decoder-layer prefix; None: the layout's own
    labels: dict = field(default_factory=dict)


def write_head(d: Path, tensors: dict[str, np.ndarray], config: dict | str, layout: str, files: Files) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    prefix = files.prefix or _PREFIX[layout]
    named = {(prefix + k[2:] if k.startswith("L.") else k): v for k, v in tensors.items()}
    (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if files.fmt == "bin":
        if files.dtype == "F16":
            named = {k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in named.items()}
        tm.write_torch_bin(d / "pytorch_model.bin", named)
        return d
    names = list(named)
    parts = [names[i::files.shards] for i in range(files.shards)]
    stem = "model.safetensors" if files.shards == 1 else "model-{:05d}-of-{:05d}.safetensors"
    weight_map = {}
    for i, part in enumerate(parts):
        fname = stem.format(i + 1, files.shards)
        write_safetensors(d / fname, {k: named[k] for k in part}, files.dtype, files.labels)
        weight_map.update({k: fname for k in part})
    if files.shards > 1:
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


# ---- the quirks -----------------------------------------------------------------------------

Edit = Callable[[dict], None]


@dataclass(frozen=True)
class Quirk:
    layout: str = "specforge"
    shape: Shape = Shape()
    config: Optional[Edit] = None    # edits config.json (a dict)
    tensors: Optional[Edit] = None   # edits the canonical-name tensors
    files: Files = Files()
    refused: Optional[str] = None    # the refusal message must contain this
    note: Optional[str] = None       # a converter log line must contain this
    layers: tuple = tm.CAPTURE_IDS   # expected llama.cpp target_layers
    llama_cpp: bool = False          # also compare llama.cpp's run of the head with the reference
    raw_config: Optional[Callable[[dict], str]] = None  # config.json text (duplicate keys)
    expect: Optional[Callable[[Eagle3Head], bool]] = None  # a property of the converted head
    variant: bool = False            # written as arch eagle3x (this runtime's graph, not llama.cpp's)


def _set(**kv) -> Edit:
    return lambda c: c.update(kv)


def _pop(*keys) -> Edit:
    return lambda c: [c.pop(k, None) for k in keys]


def _seq(*edits: Edit) -> Edit:
    return lambda c: [e(c) for e in edits]


def _inner(edit: Edit) -> Edit:
    """An edit of speculators' transformer_layer_config."""
    return lambda c: edit(c["transformer_layer_config"])


def _ids(ids) -> Edit:
    return lambda c: c["eagle_config"].__setitem__("eagle_aux_hidden_state_layer_ids", ids)


def _add(name: str, make: Callable[[dict], np.ndarray]) -> Edit:
    return lambda t: t.__setitem__(name, make(t))


def _zeros_like(name: str, rows_of: Optional[str] = None) -> Callable[[dict], np.ndarray]:
    return lambda t: np.zeros(t[rows_of or name].shape[0], np.float32)


def qk_norm_tensors(head_dim: int = tm.HEAD_DIM) -> Edit:
    """Qwen3-style per-head q/k norms (not all ones: a missing norm would show)."""
    def edit(t: dict) -> None:
        rng = np.random.default_rng(3)
        t["L.self_attn.q_norm.weight"] = (1 + 0.2 * rng.standard_normal(head_dim)).astype(np.float32)
        t["L.self_attn.k_norm.weight"] = (1 + 0.2 * rng.standard_normal(head_dim)).astype(np.float32)
    return edit


def fc_norm_tensors(n_taps: int, width: int = tm.H) -> Edit:
    """speculators' per-tap norms fc_norm.<i>.weight (top level)."""
    def edit(t: dict) -> None:
        rng = np.random.default_rng(4)
        t.update({f"fc_norm.{i}.weight": (1 + 0.2 * rng.standard_normal(width)).astype(np.float32) for i in range(n_taps)})
    return edit


def bias_tensors(projs) -> Edit:
    """Nonzero biases on the named projections (q/k/v/o: self_attn, gate/up/down: mlp)."""
    def edit(t: dict) -> None:
        rng = np.random.default_rng(6)
        for p in projs:
            name = f"L.self_attn.{p}_proj" if p in "qkvo" else f"L.mlp.{p}_proj"
            t[name + ".bias"] = (0.3 * rng.standard_normal(t[name + ".weight"].shape[0])).astype(np.float32)
    return edit


def _fp8(t: dict) -> None:
    for k in ("L.self_attn.q_proj.weight", "L.mlp.up_proj.weight"):
        t[k] = np.zeros(t[k].shape, np.uint8)
        t[k.replace(".weight", ".weight_scale")] = np.ones(1, np.float32)


def _nvfp4(t: dict) -> None:
    w = t["L.mlp.gate_proj.weight"]
    t["L.mlp.gate_proj.weight"] = np.zeros((w.shape[0], w.shape[1] // 2), np.uint8)
    t["L.mlp.gate_proj.weight_scale"] = np.ones((w.shape[0], w.shape[1] // 16), np.float32)
    t["L.mlp.gate_proj.weight_scale_2"] = np.ones(1, np.float32)


MINIMAL_SPECULATORS = {  # speculators writes only what differs from its and transformers' defaults
    "architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
    "speculators_config": {"algorithm": "eagle3", "verifier": {"name_or_path": "/home/me/models/Llama-tiny",
                                                               "architectures": ["LlamaForCausalLM"]}},
    "transformer_layer_config": {"hidden_size": tm.H, "vocab_size": None, "model_type": "llama"},
    "draft_vocab_size": tm.DRAFT_VOCAB, "dtype": "bfloat16",
}

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8}  # tiny original context: scaling shows at positions < 24
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2000, "mscale": 1.0,
        "mscale_all_dim": 0.5}

NO_D2T = Shape(draft_vocab=None)

QUIRKS: dict[str, Quirk] = {
    # 1. architecture names: the layout comes from keys and tensors
    "arch LlamaForCausalLM, model_type qwen3": Quirk("eagle", config=_set(model_type="qwen3"),
                                                       layers=(2, 4, 5), llama_cpp=True),
    "arch Eagle3DraftModel": Quirk("speculators", config=_set(architectures=["Eagle3DraftModel"])),
    "no architectures, speculators_model_type": Quirk("speculators", config=_pop("architectures")),
    "arch qwen2 name on a Llama-style head": Quirk("eagle", config=_set(architectures=["Qwen2ForCausalLM"],
                                                                         model_type="qwen2")),
    "model_type phi3": Quirk(config=_set(model_type="phi3")),
    # 2. the target's num_hidden_layers on a one-layer head
    "num_hidden_layers 36": Quirk(config=_set(num_hidden_layers=36), note="num_hidden_layers 36"),
    # 3. head_dim missing / not hidden/heads / contradicted by the weights
    "head_dim missing, 4 x 32 on hidden 64": Quirk(shape=Shape(head_dim=32), config=_pop("head_dim"),
                                                   expect=lambda h: h.config.head_dim == 32, llama_cpp=True),
    "head_dim contradicts q_proj": Quirk(config=_set(head_dim=8), note="warning: config head_dim 8",
                                         expect=lambda h: h.config.head_dim == tm.HEAD_DIM, llama_cpp=True),
    "1 head of 96 on hidden 64 (MHA)": Quirk(shape=Shape(n_head=1, n_kv=1, head_dim=96), llama_cpp=True),
    # 4. RoPE
    "rope_theta missing": Quirk(config=_pop("rope_theta")),
    "rope_theta null": Quirk(config=_set(rope_theta=None)),
    "rope_theta integer": Quirk(config=_set(rope_theta=500000), expect=lambda h: h.config.rope_theta == 500000.0,
                                llama_cpp=True),
    "rope_scaling null": Quirk(config=_set(rope_scaling=None)),
    "rope_scaling llama3": Quirk(config=_set(rope_scaling=LLAMA3), llama_cpp=True),
    "rope_scaling yarn (mscale)": Quirk(config=_set(rope_scaling=YARN), llama_cpp=True),
    "rope_scaling linear (type)": Quirk(config=_set(rope_scaling={"type": "linear", "factor": 2.0}), llama_cpp=True),
    "rope_scaling mrope under type": Quirk(config=_set(rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
                                           note="mrope"),
    "transformers 5 rope_parameters": Quirk(config=_seq(_pop("rope_theta"),
                                                        _set(rope_parameters={**LLAMA3, "rope_theta": 20000.0})),
                                            expect=lambda h: h.config.rope_theta == 20000.0, llama_cpp=True),
    "rope_scaling dynamic": Quirk(config=_set(rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
                                  refused="rope_scaling type 'dynamic'"),
    "yarn with beta_fast 16": Quirk(config=_set(rope_scaling={**YARN, "beta_fast": 16}), refused="beta_fast"),
    # 5. draft vocabulary, d2t, t2d, lm_head, embed_tokens
    "draft_vocab_size missing": Quirk(config=_pop("draft_vocab_size")),
    "draft_vocab_size null": Quirk(config=_set(draft_vocab_size=None)),
    "truncated_vocab_size": Quirk(config=_seq(_pop("draft_vocab_size"), _set(truncated_vocab_size=tm.DRAFT_VOCAB))),
    "draft_vocab_size contradicts d2t": Quirk(config=_set(draft_vocab_size=32000), note="warning: config draft_vocab_size"),
    "whole target vocabulary, no d2t": Quirk(shape=NO_D2T, llama_cpp=True),
    "no t2d": Quirk(tensors=_pop("t2d")),
    "no lm_head, reduced vocabulary": Quirk(tensors=_pop("lm_head.weight"), note="taken from the target's output",
                                            llama_cpp=True),
    "no lm_head, no d2t": Quirk(shape=NO_D2T, tensors=_pop("lm_head.weight"), llama_cpp=True),
    "no lm_head, identity d2t": Quirk(shape=NO_D2T, tensors=_seq(_pop("lm_head.weight"),
                                                                 _add("d2t", lambda t: np.zeros(N_VOCAB, np.int64))),
                                      note="d2t is the identity", llama_cpp=True),
    "own embed_tokens": Quirk(tensors=_add("embed_tokens.weight",
                                           lambda t: np.random.default_rng(0).standard_normal((N_VOCAB, tm.H)).astype(np.float32)),
                              expect=lambda h: h.embed_tokens is not None, llama_cpp=True),
    # 6. tie_word_embeddings true on an untied [Vd, H] lm_head
    "tie_word_embeddings true": Quirk(config=_set(tie_word_embeddings=True)),
    # 7. target_hidden_size != hidden (70B-style heads with their own embedding)
    "target_hidden_size 64, hidden 48": Quirk(
        shape=Shape(hidden=48, n_head=3, n_kv=1),
        tensors=_add("embed_tokens.weight", lambda t: np.random.default_rng(0).standard_normal((N_VOCAB, 48)).astype(np.float32)),
        llama_cpp=True),
    # 8. capture layers
    "ids at the top level (AngelSlim)": Quirk("angelslim"),
    "ids inside eagle_config (SpecForge)": Quirk("specforge"),
    "target_layer_ids (input-of, speculators)": Quirk(
        "speculators", config=_seq(_pop("eagle_aux_hidden_state_layer_ids"), _set(target_layer_ids=[2, 4, 5]))),
    "ids null: defaults": Quirk(config=_ids(None), layers=(2, 4, 5)),
    "eagle_config null: defaults": Quirk(config=_set(eagle_config=None), layers=(2, 4, 5)),
    "output-of ids, +1 as SGLang adds": Quirk(config=_ids([0, 2, 5]), layers=(1, 3, 6)),
    "4 taps": Quirk(shape=Shape(taps=4), config=_ids([1, 2, 3, 4]), layers=(2, 3, 4, 5), variant=True),
    "5 taps": Quirk(shape=Shape(taps=5), config=_ids([1, 2, 3, 4, 5]), layers=(2, 3, 4, 5, 6), variant=True),
    "6 taps": Quirk(shape=Shape(taps=6), config=_ids([1, 2, 3, 4, 5, 6]), refused="6 target-layer taps"),
    "last-layer tap": Quirk(config=_ids([1, 3, 7]), refused="output of the last layer"),
    # 9. norm options
    "norm_before_residual true (speculators)": Quirk("speculators", config=_set(norm_before_residual=True),
                                                     llama_cpp=True),
    "norm_before_residual omitted (EAGLE, SpecForge)": Quirk(config=_pop("norm_before_residual")),
    "norm_before_fc with input_norm": Quirk("speculators", config=_set(norm_before_fc=True),
                                            tensors=_add("input_norm.weight", lambda t: np.full(3 * tm.H, 1.1, np.float32)),
                                            llama_cpp=True),
    "fc_norm": Quirk("speculators", config=_set(fc_norm=True), tensors=fc_norm_tensors(3), variant=True),
    "fc_norm without its tensors": Quirk(config=_set(fc_norm=True), refused="fc_norm is set"),
    "norm_output": Quirk(config=_set(norm_output=True), variant=True),
    "use_aux_hidden_state false": Quirk(config=lambda c: c["eagle_config"].update(use_aux_hidden_state=False),
                                        refused="use_aux_hidden_state"),
    # 10. attention and MLP variants
    "attention_bias true, zero biases": Quirk(config=_set(attention_bias=True),
                                              tensors=_seq(*(_add(f"L.self_attn.{p}_proj.bias",
                                                                  _zeros_like(f"L.self_attn.{p}_proj.weight"))
                                                             for p in "qkv")),
                                              note="is all zeros", llama_cpp=True),
    "attention_bias with biases": Quirk(config=_set(attention_bias=True), tensors=bias_tensors("qkvo"), variant=True),
    "mlp_bias with biases": Quirk(config=_set(mlp_bias=True), tensors=bias_tensors(("gate", "up", "down")), variant=True),
    "q_norm / k_norm": Quirk(tensors=qk_norm_tensors(), variant=True),
    "fc bias": Quirk(tensors=_add("fc.bias", lambda t: np.ones(tm.H, np.float32)), refused="a bias on fc"),
    "MHA (kv heads = heads)": Quirk(shape=Shape(n_kv=tm.N_HEAD), llama_cpp=True),
    "sliding_window, use_sliding_window false": Quirk(config=_set(sliding_window=4, use_sliding_window=False)),
    "sliding_window in use": Quirk(config=_set(sliding_window=4, use_sliding_window=True), refused="sliding-window"),
    "MLA draft": Quirk(config=_set(kv_lora_rank=16), refused="MLA"),
    # 11. files, dtypes, prefixes, config spellings
    "pytorch_model.bin fp16": Quirk("eagle", files=Files(fmt="bin", dtype="F16"), layers=(2, 4, 5)),
    "sharded safetensors bf16": Quirk(files=Files(dtype="BF16", shards=3)),
    "fp16 safetensors": Quirk(files=Files(dtype="F16")),
    "prefix layers.0. on SpecForge": Quirk(files=Files(prefix="layers.0.")),
    "prefix model.layers.0.": Quirk("speculators", files=Files(prefix="model.layers.0.")),
    "duplicate config key (last wins)": Quirk(raw_config=lambda c: json.dumps(c)[:-1] + ', "rope_theta": 10000.0}',
                                              config=_set(rope_theta=1.0),
                                              expect=lambda h: h.config.rope_theta == 10000.0),
    "dtype instead of torch_dtype": Quirk(config=_seq(_pop("torch_dtype"), _set(dtype="bfloat16"))),
    "speculators omitting defaults": Quirk("speculators", shape=Shape(n_head=32, n_kv=32, head_dim=4),
                                           config=lambda c: (c.clear(), c.update(json.loads(json.dumps(MINIMAL_SPECULATORS)))),
                                           note="omits norm_before_residual", llama_cpp=True),
    "quantization_config, float weights": Quirk(config=_set(quantization_config={"quant_method": "fp8"}),
                                                note="quantization_config present"),
    "fp8 export": Quirk(config=_set(quantization_config={"quant_method": "fp8"}), tensors=_fp8,
                        files=Files(labels={"midlayer.self_attn.q_proj.weight": "F8_E4M3",
                                            "midlayer.mlp.up_proj.weight": "F8_E4M3"}),
                        refused="quantized export"),
    "NVFP4 export": Quirk(config=_set(quantization_config={"quant_method": "modelopt", "quant_algo": "NVFP4"}),
                          tensors=_nvfp4, refused="quantized export"),
    "hidden_act gelu": Quirk(config=_set(hidden_act="gelu"), refused="hidden_act"),
}


def build(q: Quirk, d: Path, n_vocab: int) -> Path:
    tensors = head_tensors(q.shape, n_vocab)
    if q.tensors:
        q.tensors(tensors)
    config = head_config(q.layout, q.shape, n_vocab)
    if q.config:
        q.config(config)
    text = q.raw_config(config) if q.raw_config else config
    return write_head(d, tensors, text, q.layout, q.files)


def run_convert(q: Quirk, tmp_path: Path, target: Path, n_vocab: int) -> tuple[Path, list[str]]:
    logs: list[str] = []
    out = tmp_path / "head.gguf"
    convert(build(q, tmp_path / "hf", n_vocab), str(target), out, "f32", log=logs.append)
    return out, logs


RUNS = [k for k, q in QUIRKS.items() if q.refused is None]
REFUSED = [k for k, q in QUIRKS.items() if q.refused is not None]


@pytest.mark.parametrize("name", RUNS)
def test_quirk_converts(name, tmp_path, targets, n_vocab):
    q = QUIRKS[name]
    out, logs = run_convert(q, tmp_path, targets["llama"], n_vocab)  # includes the read-back reference check
    head = read_head_gguf(out)
    assert head.config.target_layers == q.layers
    if q.note:
        assert any(q.note in line for line in logs), logs
    if q.expect:
        assert q.expect(head)
    assert (read_gguf_header(out).meta["general.architecture"] == "eagle3x") == q.variant
    assert any("written as arch eagle3x" in line for line in logs) == q.variant
    if q.llama_cpp:
        check_llama_cpp_matches_reference(out, targets["llama"], n_vocab)


@pytest.mark.parametrize("name", REFUSED)
def test_quirk_refused(name, tmp_path, targets, n_vocab):
    q = QUIRKS[name]
    with pytest.raises(ConversionError, match=q.refused) as e:
        run_convert(q, tmp_path, targets["llama"], n_vocab)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "head.gguf").exists()


def test_rope_scaling_changes_what_llama_cpp_computes(tmp_path, targets, n_vocab):
    """The llama3 and yarn fixtures would pass trivially if scaling were a no-op at the tested positions."""
    plain, _ = run_convert(Quirk(), tmp_path / "plain", targets["llama"], n_vocab)
    for name in ("rope_scaling llama3", "rope_scaling yarn (mscale)"):
        scaled, _ = run_convert(QUIRKS[name], tmp_path / name.split()[1], targets["llama"], n_vocab)
        a, b = read_head_gguf(plain), read_head_gguf(scaled)
        rng = np.random.default_rng(0)
        emb, g = rng.standard_normal((24, tm.H)), rng.standard_normal((24, tm.H))
        la, _ = decode(a, a.config, emb, g, np.arange(24))
        lb, _ = decode(b, b.config, emb, g, np.arange(24))
        assert rel(lb, la) > 1e-2, name


@pytest.mark.parametrize("name", ["no lm_head, reduced vocabulary", "target_hidden_size 64, hidden 48",
                                  "rope_scaling yarn (mscale)"])
def test_quirk_greedy_identical(name, tmp_path, targets, n_vocab):
    from test_greedy import plain_llm, spec_llm

    out, _ = run_convert(QUIRKS[name], tmp_path, targets["llama"], n_vocab)
    plain = plain_llm(targets["llama"], n_threads=1)  # one thread: no spinning workers on a busy machine
    spec = spec_llm(targets["llama"], out, eagle3_draft_max=3, n_threads=1)
    prompt = "in the beginning of the"
    a = plain(prompt, max_tokens=32, temperature=0.0)["choices"][0]["text"]
    b = spec(prompt, max_tokens=32, temperature=0.0)["choices"][0]["text"]
    assert a == b
    assert spec.speculative_stats()["drafted"] > 0
    spec.close()
    plain.close()


@pytest.mark.slow  # about a minute and 2 GB of disk
def test_real_size_head_converts_within_its_file_size(tmp_path):
    """A random head of the Llama-3.1-8B head's shapes (bf16, 0.85 GB) against a metadata-only target
    GGUF: converts, and the converter's peak memory stays near the file size."""
    import resource
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, str(root / "examples" / "convert_memory.py"), str(tmp_path)], check=True)
    size = (tmp_path / "head" / "model.safetensors").stat().st_size
    r = subprocess.run([sys.executable, "-m", "eagle3_convert", str(tmp_path / "head"), "--target",
                        str(tmp_path / "target.gguf"), "--outfile", str(tmp_path / "head.gguf")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
    assert peak < 1.5 * size, f"peak {peak / 1e9:.2f} GB for a {size / 1e9:.2f} GB head"
