"""HF EAGLE-3 checkpoint layouts -> the canonical Eagle3Head.

Layouts (how they are told apart):
  speculators  RedHatAI speculators (`Eagle3Speculator` / `Eagle3DraftModel`, or a
               `transformer_layer_config`): `layers.0.*`; layer ids use the
               "input of layer i" convention.
  specforge    SpecForge `LlamaForCausalLMEagle3`: `midlayer.*`; ids "output of layer i".
  angelslim    AngelSlim / vLLM `Eagle3LlamaForCausalLM`: ids "output of layer i".
  eagle        official SafeAILab EAGLE-3 (`LlamaForCausalLM` with `midlayer.*` and a
               draft_vocab_size): no ids stored, the defaults [2, N//2, N-3] (input of).

The two id conventions name the same states: output of layer i == input of layer i+1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from .checkpoint import read_weights
from .errors import ConversionError
from .head import Eagle3Config, Eagle3Head
from .target import TargetInfo

Convention = Literal["input", "output"]

_LAYER_TENSORS = {
    "input_layernorm.weight": "input_layernorm",
    "hidden_norm.weight": "hidden_norm",
    "self_attn.q_proj.weight": "q_proj",
    "self_attn.k_proj.weight": "k_proj",
    "self_attn.v_proj.weight": "v_proj",
    "self_attn.o_proj.weight": "o_proj",
    "post_attention_layernorm.weight": "post_attention_layernorm",
    "mlp.gate_proj.weight": "gate_proj",
    "mlp.up_proj.weight": "up_proj",
    "mlp.down_proj.weight": "down_proj",
}
_TOP_TENSORS = {
    "fc.weight": "fc",
    "norm.weight": "norm",
    "lm_head.weight": "lm_head",
    "embed_tokens.weight": "embed_tokens",
    "input_norm.weight": "enc_norm",
    "d2t": "d2t",
}
_IGNORED = {"t2d"}  # a bool mask over the target vocabulary: derivable from d2t, unused at run time


def detect_layout(config: dict[str, Any], names: set[str]) -> str:
    archs = config.get("architectures") or []
    archs = archs if isinstance(archs, list) else [archs]
    if "transformer_layer_config" in config or any(a in ("Eagle3Speculator", "Eagle3DraftModel") for a in archs):
        return "speculators"
    if "LlamaForCausalLMEagle3" in archs:
        return "specforge"
    if "Eagle3LlamaForCausalLM" in archs:
        return "angelslim"
    if any(n.startswith("midlayer.") for n in names) or any(n.startswith("layers.0.") for n in names):
        return "eagle"
    raise ConversionError("cannot tell the head's layout: config.json `architectures` is "
                          f"{archs or 'missing'} and no midlayer.* / layers.0.* tensors were found")


def _hparams(config: dict[str, Any], layout: str) -> dict[str, Any]:
    if layout == "speculators" and isinstance(config.get("transformer_layer_config"), dict):
        return {**config, **config["transformer_layer_config"]}
    return config


def _req(h: dict[str, Any], key: str, kind: type) -> Any:
    if key not in h:
        raise ConversionError(f"config.json lacks key {key}")
    v = h[key]
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise ConversionError(f"config key {key} must be an integer, got {v!r}")
    if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise ConversionError(f"config key {key} must be a number, got {v!r}")
    return kind(v)


def _stored_layer_ids(config: dict[str, Any]) -> Optional[list[int]]:
    for src in (config, config.get("eagle_config") or {}, config.get("speculators_config") or {}):
        if isinstance(src, dict) and src.get("eagle_aux_hidden_state_layer_ids") is not None:
            ids = src["eagle_aux_hidden_state_layer_ids"]
            if not (isinstance(ids, list) and len(ids) == 3 and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
                raise ConversionError(f"config key eagle_aux_hidden_state_layer_ids must be three integers, got {ids!r}")
            return ids
    return None


def resolve_layer_ids(config: dict[str, Any], layout: str, n_target_layers: int,
                      convention: Optional[Convention] = None,
                      explicit: Optional[list[int]] = None) -> tuple[tuple[int, int, int], str]:
    """Target layer ids in llama.cpp's "input of layer" convention, and how they were found."""
    if explicit is not None:
        if len(explicit) != 3:
            raise ConversionError(f"--target-layers needs three ids, got {explicit}")
        ids, how = list(explicit), "given on the command line"
        conv = convention or "input"
    else:
        stored = _stored_layer_ids(config)
        if stored is None:
            n = n_target_layers
            return (2, n // 2, n - 3), f"not stored in the head: EAGLE-3 defaults [2, N//2, N-3] for N={n}"
        ids = stored
        if convention is not None:
            conv, how = convention, f"stored {stored}, convention given as '{convention}'"
        else:
            conv = "input" if layout == "speculators" else "output"
            how = f"stored {stored}, '{conv} of layer i' convention detected from the {layout} layout"
    out = tuple(i + 1 for i in ids) if conv == "output" else tuple(ids)
    return (int(out[0]), int(out[1]), int(out[2])), how


def load_hf_head(path: Path, target: TargetInfo, convention: Optional[Convention] = None,
                 explicit_layers: Optional[list[int]] = None) -> Eagle3Head:
    """The head of an HF checkpoint directory (or weights file beside its config.json)."""
    try:
        return _load_hf_head(Path(path), target, convention, explicit_layers)
    except ConversionError:
        raise
    except (TypeError, ValueError, AttributeError, IndexError, KeyError) as e:
        raise ConversionError(f"{path}: config.json or the weights hold a value of the wrong type or shape "
                              f"({type(e).__name__}: {e})") from None


def _load_hf_head(path: Path, target: TargetInfo, convention: Optional[Convention],
                  explicit_layers: Optional[list[int]]) -> Eagle3Head:
    cfg_path = path / "config.json" if path.is_dir() else path.parent / "config.json"
    try:
        config = json.loads(cfg_path.read_text())
    except OSError:
        raise ConversionError(f"{cfg_path}: the head needs its config.json") from None
    except json.JSONDecodeError as e:
        raise ConversionError(f"{cfg_path}: malformed JSON ({e})") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{cfg_path}: config.json must hold a JSON object")
    weights = read_weights(path)
    layout = detect_layout(config, set(weights))
    h = _hparams(config, layout)

    n_layers = h.get("num_hidden_layers", 1)
    if n_layers != 1:
        raise ConversionError(f"config key num_hidden_layers is {n_layers}: EAGLE-3 heads have exactly one layer")
    hidden = _req(h, "hidden_size", int)
    n_head = _req(h, "num_attention_heads", int)
    n_kv = int(h.get("num_key_value_heads") or n_head)
    head_dim = int(h.get("head_dim") or (hidden // n_head if n_head else 0))
    vocab = _req(h, "vocab_size", int) if "vocab_size" in h else target.n_vocab
    rope_scaling = h.get("rope_scaling")
    if rope_scaling is not None:
        kind = rope_scaling.get("rope_type", rope_scaling.get("type")) if isinstance(rope_scaling, dict) else None
        if kind not in ("llama3", "default"):
            raise ConversionError(f"config key rope_scaling of type {kind!r} is not supported (only llama3)")
        if kind == "default":
            rope_scaling = None

    ids, how = resolve_layer_ids(config, layout, target.n_layer, convention, explicit_layers)

    tensors: dict[str, np.ndarray] = {}
    for name, arr in weights.items():
        key = name[len("model."):] if name.startswith("model.") else name
        for prefix in ("midlayer.", "layers.0."):
            if key.startswith(prefix):
                sub = key[len(prefix):]
                if sub not in _LAYER_TENSORS:
                    raise ConversionError(f"unexpected tensor {name} in the head's decoder layer")
                tensors[_LAYER_TENSORS[sub]] = arr
                break
        else:
            if key in _TOP_TENSORS:
                tensors[_TOP_TENSORS[key]] = arr
            elif key not in _IGNORED:
                raise ConversionError(f"unexpected tensor {name} in the head (layout {layout})")
    missing = [k for k in ("fc", "norm", *_LAYER_TENSORS.values()) if k not in tensors]
    if missing:
        raise ConversionError(f"head is missing tensor(s) {', '.join(missing)} (layout {layout})")

    d2t = tensors.get("d2t")
    if d2t is not None:
        if d2t.ndim != 1 or d2t.dtype.kind not in "iu":
            raise ConversionError(f"tensor d2t must be a 1-D integer tensor, got {d2t.dtype} {d2t.shape}")
        d2t = d2t.astype(np.int64) + np.arange(len(d2t), dtype=np.int64)  # HF stores offsets
    lm_head = tensors.get("lm_head")
    draft_vocab = int(h.get("draft_vocab_size") or (len(d2t) if d2t is not None else vocab))

    fc = tensors["fc"]
    target_hidden = int(h.get("target_hidden_size") or (fc.shape[1] // 3 if fc.ndim == 2 else 0))
    config_out = Eagle3Config(
        hidden_size=hidden,
        intermediate_size=_req(h, "intermediate_size", int),
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        head_dim=head_dim,
        rms_norm_eps=float(h.get("rms_norm_eps", 1e-6)),
        rope_theta=float(h.get("rope_theta", 10000.0)),
        target_hidden_size=target_hidden,
        vocab_size=vocab,
        draft_vocab_size=draft_vocab,
        target_layers=ids,
        max_position_embeddings=int(h.get("max_position_embeddings", 4096)),
        rope_scaling=rope_scaling,
        norm_before_residual=bool(h.get("norm_before_residual", False)),
        norm_before_fc=bool(h.get("norm_before_fc", False) or "enc_norm" in tensors),
    )
    head = Eagle3Head(
        config=config_out, fc=fc, d2t=d2t, lm_head=lm_head, embed_tokens=tensors.get("embed_tokens"),
        enc_norm=tensors.get("enc_norm"), norm=tensors["norm"],
        **{v: tensors[v] for v in _LAYER_TENSORS.values()},
        extra={"layout": layout, "layer_ids": how},
    )
    head.validate()
    return head
