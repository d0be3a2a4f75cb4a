"""What an HF EAGLE-3 head's config.json says, with the quirks of published heads resolved.

Every function here reads the (merged) config dict only; the weights decide shapes
elsewhere (layouts.py). A setting llama.cpp's eagle3 graph cannot run raises
`refuse(...)`: one ConversionError line naming the head's feature and what would
support it. Canonical RoPE scaling (Eagle3Config.rope_scaling) is None or a dict
with "rope_type" one of:
  llama3  factor, low_freq_factor, high_freq_factor, original_max_position_embeddings
  linear  factor
  yarn    factor, original_max_position_embeddings, attention_factor (HF semantics:
          multiplies cos and sin)
  freqs   factors: the per-frequency divisors of a GGUF rope_freqs tensor (read-back only)
"""

from __future__ import annotations

import math
from typing import Any, Optional

from .errors import ConversionError

DEFAULT_ROPE_THETA = 10000.0  # transformers' LlamaConfig default
DEFAULT_N_HEAD = 32           # transformers' LlamaConfig default (speculators configs omit defaults)
_YARN_BETA_FAST, _YARN_BETA_SLOW = 32.0, 1.0  # the only values llama.cpp's eagle3 loader uses


def refuse(feature: str, support: str) -> ConversionError:
    """The one-line refusal for a head feature llama.cpp's eagle3 graph cannot run."""
    return ConversionError(f"unsupported head: {feature}; {support}")


def merged_hparams(config: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys overlaid by speculators' nested `transformer_layer_config`."""
    inner = config.get("transformer_layer_config")
    return {**config, **inner} if isinstance(inner, dict) else config


def number(h: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    """h[key] as int/float; missing or null -> default; a value of another type -> ConversionError."""
    v = h.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
            (kind is int and not float(v).is_integer()):
        raise ConversionError(f"config key {key} must be {'an integer' if kind is int else 'a finite number'}, "
                              f"got {v!r}")
    return kind(v)


def flag(config: dict[str, Any], key: str) -> Optional[bool]:
    """A boolean setting at the top level, in transformer_layer_config or in eagle_config (None: absent)."""
    for src in (config, config.get("transformer_layer_config"), config.get("eagle_config")):
        if isinstance(src, dict) and src.get(key) is not None:
            return bool(src[key])
    return None


# ---- RoPE -------------------------------------------------------------------------------

def _rope_source(h: dict[str, Any]) -> tuple[Any, Any]:
    """(rope_theta, scaling dict or None): transformers 5 writes both into `rope_parameters`."""
    params = h.get("rope_parameters")
    if isinstance(params, dict) and params:
        if all(isinstance(v, dict) for v in params.values()):  # per attention type (sliding / full)
            raise refuse(f"rope_parameters per attention type ({', '.join(params)})",
                         "a one-layer EAGLE-3 head needs one RoPE setting")
        return params.get("rope_theta", h.get("rope_theta")), params
    return h.get("rope_theta"), h.get("rope_scaling")


def rope_settings(h: dict[str, Any], notes: list[str]) -> tuple[float, Optional[dict]]:
    """(rope_theta, canonical rope_scaling) from rope_theta/rope_scaling or rope_parameters."""
    theta, scaling = _rope_source(h)
    theta = number({"rope_theta": theta}, "rope_theta", float, DEFAULT_ROPE_THETA)
    if theta <= 0:
        raise ConversionError(f"config key rope_theta must be positive, got {theta}")
    if scaling is None or scaling == {}:
        return theta, None
    if not isinstance(scaling, dict):
        raise ConversionError(f"config key rope_scaling must be an object or null, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return theta, None
    if kind == "mrope":
        notes.append("rope_scaling type mrope: text positions are equal in every section, so it is plain RoPE")
        return theta, None
    factor = number(scaling, "factor", float, None)
    if kind in ("llama3", "linear", "yarn") and (factor is None or factor <= 0):
        raise ConversionError(f"config key rope_scaling ({kind}) needs a positive factor, got {scaling.get('factor')!r}")
    if kind == "llama3":
        return theta, {"rope_type": "llama3", "factor": factor,
                       "low_freq_factor": number(scaling, "low_freq_factor", float, 1.0),
                       "high_freq_factor": number(scaling, "high_freq_factor", float, 4.0),
                       "original_max_position_embeddings":
                           number(scaling, "original_max_position_embeddings", int, 8192)}
    if kind == "linear":
        return theta, {"rope_type": "linear", "factor": factor}
    if kind == "yarn":
        return theta, _yarn(scaling, factor, number(h, "max_position_embeddings", int, 4096))
    raise refuse(f"rope_scaling type {kind!r}",
                 "llama.cpp's eagle3 graph runs plain, llama3, linear and yarn RoPE scaling")


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """HF's get_mscale: YaRN's attention scaling for a context extension by `factor`."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn(s: dict[str, Any], factor: float, max_pos: int) -> dict:
    beta_fast = number(s, "beta_fast", float, _YARN_BETA_FAST)
    beta_slow = number(s, "beta_slow", float, _YARN_BETA_SLOW)
    if (beta_fast, beta_slow) != (_YARN_BETA_FAST, _YARN_BETA_SLOW):
        raise refuse(f"yarn beta_fast/beta_slow {beta_fast:g}/{beta_slow:g}",
                     "llama.cpp's eagle3 loader reads no yarn beta keys and uses 32/1")
    if s.get("truncate") is False:
        raise refuse("yarn with truncate: false", "ggml's YaRN always rounds the correction range")
    attention = number(s, "attention_factor", float, None)
    if attention is None:
        mscale, mscale_all = number(s, "mscale", float, None), number(s, "mscale_all_dim", float, None)
        if mscale and mscale_all:
            attention = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all)
        else:
            attention = yarn_mscale(factor)
    return {"rope_type": "yarn", "factor": factor, "attention_factor": attention,
            "original_max_position_embeddings": number(s, "original_max_position_embeddings", int, max_pos)}


# ---- vocabulary and capture layers ------------------------------------------------------

def configured_draft_vocab(h: dict[str, Any]) -> Optional[int]:
    """draft_vocab_size or its older spelling truncated_vocab_size; None when missing or null."""
    for key in ("draft_vocab_size", "truncated_vocab_size"):
        v = number(h, key, int, None)
        if v is not None:
            return v
    return None


_ID_KEYS = ("eagle_aux_hidden_state_layer_ids", "target_layer_ids")


def stored_layer_ids(config: dict[str, Any]) -> Optional[list[int]]:
    """Capture-layer ids as stored (any count), or None: missing or null everywhere means the defaults."""
    for src in (config, config.get("eagle_config"), config.get("speculators_config"),
                config.get("transformer_layer_config")):
        if not isinstance(src, dict):
            continue
        for key in _ID_KEYS:
            ids = src.get(key)
            if ids is None:
                continue
            if not (isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
                raise ConversionError(f"config key {key} must be a list of integers, got {ids!r}")
            return ids
    return None


# ---- settings that change the math ------------------------------------------------------

def refuse_unsupported(config: dict[str, Any], h: dict[str, Any]) -> None:
    """Raises for a config setting whose math neither llama.cpp's eagle3 graph nor this runtime's own
    graph runs (norm_output, fc_norm, 4-5 taps, q/k norms and biases run in the latter: layouts.py)."""
    if flag(config, "use_aux_hidden_state") is False:
        raise refuse("use_aux_hidden_state: false (no fc; the head reads the target's final state)",
                     "this runtime captures layer inputs 1..N-1, not the target's final state at every position")
    act = h.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise refuse(f"hidden_act {act!r}", "llama.cpp's eagle3 graph runs a SiLU-gated MLP")
    if h.get("kv_lora_rank") or h.get("q_lora_rank"):
        raise refuse("MLA attention (kv_lora_rank / q_lora_rank)",
                     "llama.cpp's eagle3 graph runs grouped-query attention")
    window = number(h, "sliding_window", int, None)
    max_pos = number(h, "max_position_embeddings", int, 4096)
    if h.get("use_sliding_window") is True and window is not None and window < max_pos:
        raise refuse(f"sliding-window attention (window {window} < {max_pos} positions)",
                     "llama.cpp's eagle3 graph attends to the whole context")
