"""What a DFlash head's config.json says: its kind, its layout, and the settings llama.cpp's
dflash graph (or this converter's reference) cannot run, refused one line each.

Kinds (detect_kind, from config.json alone):
  dflash   z-lab `DFlashDraftModel` (any architecture naming DFlash, or a `dflash_config`
           object) or RedHatAI speculators `DFlashSpeculator` (speculators_model_type "dflash")
  refused  DFlash2 (selector / dynamic-conv heads), DSpark (Markov / confidence heads)
  eagle3   anything else: the EAGLE-3 converter decides

Layouts (both store `layers.N.*`, fc, hidden_norm, norm):
  zlab         target_layer_ids count OUTPUTS of target layers (HF hidden_states[i + 1]);
               block_size / mask_token_id / target_layer_ids in `dflash_config` or at the top
  speculators  nested transformer_layer_config; aux_hidden_state_layer_ids count INPUTS of
               target layers (HF hidden_states[i]), as in the speculators EAGLE-3 layout;
               draft_vocab_size + d2t for a reduced draft vocabulary
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import ConversionError
from .hf_config import merged_hparams, number, refuse

_SPECULATORS_TYPE = "speculators_model_type"
_DEFAULT_BLOCK = {"zlab": 16, "speculators": 8}  # the training code's defaults when the key is absent


def _archs(config: dict[str, Any]) -> list[str]:
    a = config.get("architectures") or []
    return [str(x) for x in (a if isinstance(a, list) else [a])]


def detect_kind(config: dict[str, Any]) -> str:
    """"dflash", "eagle3", or a refusal (ConversionError) for a DFlash variant the graph cannot run."""
    archs, stype = _archs(config), config.get(_SPECULATORS_TYPE)
    draft = config.get("dflash_config") if isinstance(config.get("dflash_config"), dict) else {}
    if any("DSpark" in a for a in archs) or stype == "dspark" or "markov_head_type" in config:
        raise refuse("a DSpark head (Markov / confidence heads on top of DFlash)",
                     "this converter writes plain DFlash heads; use llama.cpp's convert_hf_to_gguf.py for DSpark")
    if any("DFlash2" in a for a in archs) or stype == "dflash2" or "selector_rank" in draft or "conv_kernel_size" in draft:
        raise refuse("a DFlash2 head (candidate selector and dynamic convolutions)",
                     "this converter writes plain DFlash heads; use llama.cpp's convert_hf_to_gguf.py for DFlash2")
    if any("DFlash" in a for a in archs) or stype == "dflash" or draft:
        return "dflash"
    return "eagle3"


def read_head_config(path: Path) -> Optional[dict[str, Any]]:
    """The head's config.json, or None when it is missing or unreadable (the EAGLE-3 path reports that)."""
    path = Path(path)
    cfg = path / "config.json" if path.is_dir() else path.parent / "config.json"
    try:
        config = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) else None


def head_kind(path: Path) -> str:
    config = read_head_config(path)
    return "eagle3" if config is None else detect_kind(config)


def detect_layout(config: dict[str, Any]) -> str:
    if "transformer_layer_config" in config or config.get(_SPECULATORS_TYPE) or "DFlashSpeculator" in _archs(config):
        return "speculators"
    return "zlab"


@dataclass
class DFlashSettings:
    """The config's draft settings; the weights decide every shape (dflash_layouts.py)."""
    layout: str
    hparams: dict[str, Any]           # the transformer hyperparameters (merged, for speculators)
    target_layers: tuple[int, ...]    # llama.cpp ids (input of layer)
    layer_ids_note: str
    block_size: int
    mask_token_id: int
    draft_vocab_size: Optional[int]


def _draft_value(config: dict[str, Any], key: str) -> Any:
    """z-lab reads dflash_config first, then the top level."""
    draft = config.get("dflash_config")
    if isinstance(draft, dict) and draft.get(key) is not None:
        return draft[key]
    return config.get(key)


def _ids(value: Any, key: str) -> list[int]:
    if not (isinstance(value, list) and value and all(isinstance(i, int) and not isinstance(i, bool) for i in value)):
        raise ConversionError(f"config key {key} must be a non-empty list of integers, got {value!r}")
    return value


def settings(config: dict[str, Any]) -> DFlashSettings:
    layout = detect_layout(config)
    h = merged_hparams(config)
    get = (lambda k: config.get(k)) if layout == "speculators" else (lambda k: _draft_value(config, k))
    if layout == "speculators":
        stored = _ids(config.get("aux_hidden_state_layer_ids"), "aux_hidden_state_layer_ids")
        ids, note = tuple(stored), f"stored {stored} (speculators: input of layer i, used as they are)"
    else:
        stored = _ids(get("target_layer_ids"), "dflash_config.target_layer_ids")
        ids, note = tuple(i + 1 for i in stored), f"stored {stored} (z-lab: output of layer i, so i + 1)"
    mask = number({"mask_token_id": get("mask_token_id")}, "mask_token_id", int, None)
    if mask is None:
        raise ConversionError("config key mask_token_id is missing: a DFlash head needs the id of the MASK token "
                              "it was trained with (add it to config.json, e.g. the tokenizer's <|MASK|> id)")
    block = number({"block_size": get("block_size")}, "block_size", int, _DEFAULT_BLOCK[layout])
    draft_vocab = number(config, "draft_vocab_size", int, None) if layout == "speculators" else None
    refuse_unsupported(h, get)
    return DFlashSettings(layout=layout, hparams=h, target_layers=ids, layer_ids_note=note, block_size=block,
                          mask_token_id=mask, draft_vocab_size=draft_vocab)


_GRAPH = "llama.cpp's dflash graph (as this converter writes and checks it)"


def refuse_unsupported(h: dict[str, Any], get: Callable[[str], Any]) -> None:
    """Raises for a setting whose math this converter's reference and GGUF do not carry; h: the
    hyperparameters, get(key): a draft setting as the layout stores it."""
    if get("projector_type") not in (None, "dflash"):
        raise refuse(f"projector_type {get('projector_type')!r} (a correction head after DFlash)",
                     f"{_GRAPH} runs the plain DFlash projector")
    if get("sample_from_anchor"):
        raise refuse("sample_from_anchor: true (the block's first row is a prediction)",
                     "llama.cpp's DFlash drafter reads predictions from block rows 1.. only")
    act = h.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise refuse(f"hidden_act {act!r}", f"{_GRAPH} runs a SiLU-gated MLP")
    causal = h.get("is_causal", get("causal"))
    if causal:
        raise refuse("block-causal attention (is_causal / causal: true)", f"{_GRAPH} attends within a block both ways")
    types = h.get("layer_types") or []
    window = number(h, "sliding_window", int, None)
    if "sliding_attention" in types or get("use_swa") or (h.get("use_sliding_window") and window):
        raise refuse(f"sliding-window attention layers (window {window})",
                     f"{_GRAPH} is checked with full attention over the context only")
    for key, neutral in (("attention_value_scale", 1.0), ("input_embedding_scale", 1.0),
                         ("output_multiplier", 1.0), ("final_logit_softcapping", 0.0)):
        v = get(key) if get(key) is not None else h.get(key)
        if v is not None and v != neutral:
            raise refuse(f"{key} {v}", f"{_GRAPH} scales neither the embeddings, the values nor the logits")
    rope = h.get("rope_parameters") if isinstance(h.get("rope_parameters"), dict) else (h.get("rope_scaling") or {})
    partial = rope.get("partial_rotary_factor", h.get("partial_rotary_factor")) if isinstance(rope, dict) else None
    if partial not in (None, 1, 1.0):
        raise refuse(f"partial_rotary_factor {partial}", "this converter writes heads with RoPE over the whole head")
    if h.get("rope_is_neox_style") is False:
        raise refuse("rope_is_neox_style: false (interleaved RoPE)", "this converter writes NeoX (rotate-half) heads")
