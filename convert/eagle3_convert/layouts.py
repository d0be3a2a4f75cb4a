"""HF EAGLE-3 checkpoint layouts -> the canonical Eagle3Head.

Layouts (how they are told apart):
  speculators  RedHatAI speculators (`Eagle3Speculator` / `Eagle3DraftModel`, or a
               `transformer_layer_config` or `speculators_model_type` key): `layers.0.*`;
               layer ids use the "input of layer i" convention.
  specforge    SpecForge `LlamaForCausalLMEagle3`: `midlayer.*`; ids "output of layer i".
  angelslim    AngelSlim / vLLM `Eagle3LlamaForCausalLM`: ids "output of layer i".
  eagle        official SafeAILab EAGLE-3 (`LlamaForCausalLM`), or any other name with
               decoder-layer tensors: usually no ids stored, the defaults [2, N//2, N-3]
               (input of); stored ids count as "output of layer i".

The two id conventions name the same states: output of layer i == input of layer i+1.
The layout is told from keys and tensors, not from `architectures` (official EAGLE heads
say LlamaForCausalLM, model_type may say qwen2/qwen3/phi3 on a Llama-style head).

Shapes come from the weights, not from config.json: published configs carry the target's
num_hidden_layers, omit or contradict head_dim, omit draft_vocab_size, and so on (see
docs/published-heads.md). The config supplies what weights cannot: the head count, the
norm epsilon, RoPE, the capture layers and the norm flags.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from .checkpoint import read_weights
from .errors import ConversionError
from .head import MAX_TAPS, MIN_TAPS, VARIANT_TENSORS, Eagle3Config, Eagle3Head
from .hf_config import (DEFAULT_N_HEAD, configured_draft_vocab, flag, merged_hparams, number, refuse,
                        refuse_unsupported, rope_settings, stored_layer_ids)
from .target import TargetInfo, output_rows

Convention = Literal["input", "output"]

# tensor names inside the decoder layer / at the top level -> canonical Eagle3Head fields
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
# variant tensors (run by this runtime's own graph, eagle3x): biases, q/k norms, per-tap fc norms
_LAYER_VARIANTS = {f"self_attn.{p}_proj.bias": f"{p}_bias" for p in "qkvo"} | \
                  {f"mlp.{p}_proj.bias": f"{p}_bias" for p in ("gate", "up", "down")} | \
                  {"self_attn.q_norm.weight": "q_norm", "self_attn.k_norm.weight": "k_norm"}
_FC_NORM = re.compile(r"fc_norm\.(\d+)\.weight")
# t2d: a bool mask over the target vocabulary, derivable from d2t; inv_freq: a RoPE buffer
# older transformers saved into .bin files
_IGNORED = {"t2d", "self_attn.rotary_emb.inv_freq"}
_QUANT_SUFFIXES = ("_scale", "_scale_2", "scale_inv", "zero_point", ".scales", ".qweight")
_LAYER_NAME = re.compile(r"(?:layers|midlayer)\.(\d+)\.(.+)")


def split_name(name: str) -> tuple[Optional[int], str]:
    """(decoder layer index, or None for a top-level tensor; the name inside it).
    Prefixes: `midlayer.` (SpecForge, EAGLE), `layers.N.` (speculators, AngelSlim), and either under `model.`."""
    key = name[len("model."):] if name.startswith("model.") else name
    if key.startswith("midlayer.") and not _LAYER_NAME.match(key):
        return 0, key[len("midlayer."):]
    m = _LAYER_NAME.match(key)
    return (int(m.group(1)), m.group(2)) if m else (None, key)


def detect_layout(config: dict[str, Any], has_layer: bool) -> str:
    archs = config.get("architectures") or []
    archs = archs if isinstance(archs, list) else [archs]
    if "transformer_layer_config" in config or "speculators_model_type" in config or \
            any(a in ("Eagle3Speculator", "Eagle3DraftModel") for a in archs):
        return "speculators"
    if "LlamaForCausalLMEagle3" in archs:
        return "specforge"
    if "Eagle3LlamaForCausalLM" in archs:
        return "angelslim"
    if has_layer:
        return "eagle"
    raise ConversionError("cannot tell the head's layout: config.json `architectures` is "
                          f"{archs or 'missing'} and no midlayer.* / layers.0.* tensors were found")


def resolve_layer_ids(stored: Optional[list[int]], layout: str, n_target_layers: int,
                      convention: Optional[Convention] = None,
                      explicit: Optional[list[int]] = None) -> tuple[tuple[int, ...], str]:
    """Target layer ids in llama.cpp's "input of layer" convention, and how they were found."""
    if explicit is not None:
        if not MIN_TAPS <= len(explicit) <= MAX_TAPS:
            raise ConversionError(f"--target-layers needs {MIN_TAPS} to {MAX_TAPS} ids, got {explicit}")
        ids, how = list(explicit), "given on the command line"
        conv = convention or "input"
    else:
        if stored is None:
            n = n_target_layers
            return (2, n // 2, n - 3), f"not stored in the head: EAGLE-3 defaults [2, N//2, N-3] for N={n}"
        ids = stored
        if convention is not None:
            conv, how = convention, f"stored {stored}, convention given as '{convention}'"
        else:
            conv = "input" if layout == "speculators" else "output"
            how = f"stored {stored}, '{conv} of layer i' convention detected from the {layout} layout"
    return tuple(int(i) + (conv == "output") for i in ids), how


def load_hf_head(path: Path, target: TargetInfo, convention: Optional[Convention] = None,
                 explicit_layers: Optional[list[int]] = None) -> Eagle3Head:
    """The head of an HF checkpoint directory (or weights file beside its config.json).
    head.extra["notes"] lists what the converter decided about the config's quirks."""
    try:
        return _load_hf_head(Path(path), target, convention, explicit_layers)
    except ConversionError:
        raise
    except (TypeError, ValueError, AttributeError, IndexError, KeyError) as e:
        raise ConversionError(f"{path}: config.json or the weights hold a value of the wrong type or shape "
                              f"({type(e).__name__}: {e})") from None


def _read_config(path: Path) -> dict[str, Any]:
    cfg_path = path / "config.json" if path.is_dir() else path.parent / "config.json"
    try:
        config = json.loads(cfg_path.read_text())  # a duplicate key: the last one wins, as in json.load
    except OSError:
        raise ConversionError(f"{cfg_path}: the head needs its config.json") from None
    except json.JSONDecodeError as e:
        raise ConversionError(f"{cfg_path}: malformed JSON ({e})") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{cfg_path}: config.json must hold a JSON object")
    return config


def _refuse_quantized(config: dict[str, Any], weights: dict[str, np.ndarray], notes: list[str]) -> None:
    """Quantized exports (fp8, NVFP4, ...) store integer codes and scale tensors."""
    qc = config.get("quantization_config")
    quantized = [n for n, a in weights.items()
                 if n.endswith(_QUANT_SUFFIXES) or (a.dtype.kind in "iu" and split_name(n)[1] not in ("d2t", "t2d"))]
    if quantized:
        method = f" (quantization_config quant_method {qc.get('quant_method')!r})" if isinstance(qc, dict) else ""
        raise refuse(f"a quantized export{method}, e.g. tensor {quantized[0]}",
                     "convert the unquantized (bf16/fp16/fp32) head")
    if qc:
        notes.append("quantization_config present but every weight is floating point: converted as stored")


def _keep_variant(name: str, a: np.ndarray, field_name: str, out: dict[str, np.ndarray], notes: list[str]) -> None:
    """A bias of zeros changes nothing and is dropped (the head stays a plain eagle3 head); any
    other bias, and q/k norms, are kept (the head then runs in this runtime's graph, eagle3x)."""
    if field_name.endswith("_bias") and not np.any(a):
        notes.append(f"{name} is all zeros: dropped")
        return
    out[field_name] = a


def _canonical_tensors(weights: dict[str, np.ndarray], notes: list[str]) -> dict[str, np.ndarray]:
    """Checkpoint names -> canonical field names; refuses per-head q/k norms, nonzero biases, extra layers."""
    out: dict[str, np.ndarray] = {}
    layers: set[int] = set()
    taps: dict[int, np.ndarray] = {}
    for name, arr in weights.items():
        layer, sub = split_name(name)
        if layer is not None:
            layers.add(layer)
        table = _LAYER_TENSORS if layer is not None else _TOP_TENSORS
        if sub in table:
            out[table[sub]] = arr
        elif layer is not None and sub in _LAYER_VARIANTS:
            _keep_variant(name, arr, _LAYER_VARIANTS[sub], out, notes)
        elif layer is None and _FC_NORM.fullmatch(sub):
            taps[int(_FC_NORM.fullmatch(sub).group(1))] = arr
        elif layer is None and sub == "fc.bias":
            if np.any(arr):
                raise refuse(f"a bias on fc ({name} is not zero)", "no EAGLE-3 trainer writes one; neither graph has it")
            notes.append(f"{name} is all zeros: dropped")
        elif sub not in _IGNORED:
            where = "decoder layer" if layer is not None else "head"
            raise ConversionError(f"unexpected tensor {name} in the {where}: not part of an EAGLE-3 head "
                                  f"llama.cpp can run")
    if len(layers) > 1:
        raise refuse(f"{len(layers)} decoder layers (tensors of layers {sorted(layers)})",
                     "llama.cpp's eagle3 graph runs exactly one")
    if taps:
        if sorted(taps) != list(range(len(taps))):
            raise ConversionError(f"fc_norm tensors fc_norm.<i>.weight have indices {sorted(taps)}, not 0..{len(taps) - 1}")
        out["tap_norm"] = np.concatenate([np.asarray(taps[i], np.float32).reshape(-1) for i in range(len(taps))])
    return out


def _attention_shape(h: dict[str, Any], t: dict[str, np.ndarray], notes: list[str]) -> tuple[int, int, int]:
    """(heads, kv heads, head_dim): the head count from the config, head_dim from the q_proj rows."""
    n_head = number(h, "num_attention_heads", int, None)
    if n_head is None:
        n_head = DEFAULT_N_HEAD
        notes.append(f"num_attention_heads missing: transformers' default {DEFAULT_N_HEAD}")
    q_rows, k_rows = t["q_proj"].shape[0], t["k_proj"].shape[0]
    if n_head <= 0 or q_rows == 0 or q_rows % n_head:
        raise ConversionError(f"tensor q_proj has {q_rows} rows, not a multiple of num_attention_heads {n_head}: "
                              f"config.json does not describe these weights")
    head_dim = q_rows // n_head
    stated = number(h, "head_dim", int, None)
    if stated is not None and stated != head_dim:
        notes.append(f"warning: config head_dim {stated} contradicts the weights (q_proj {q_rows} rows / "
                     f"{n_head} heads): using head_dim {head_dim}")
    if k_rows % head_dim:
        raise ConversionError(f"tensor k_proj has {k_rows} rows, not a multiple of head_dim {head_dim}")
    n_kv = k_rows // head_dim
    stated = number(h, "num_key_value_heads", int, None)
    if stated is not None and stated != n_kv:
        notes.append(f"warning: config num_key_value_heads {stated} contradicts k_proj ({k_rows} rows): using {n_kv}")
    return n_head, n_kv, head_dim


def _taps(config: dict[str, Any], h: dict[str, Any], fc: np.ndarray) -> tuple[Optional[list[int]], int]:
    """(stored capture ids or None, target hidden size); refuses fewer than 3 or more than 5 taps."""
    stored = stored_layer_ids(config)
    n = len(stored) if stored is not None else 3
    width = fc.shape[1] if fc.ndim == 2 else 0
    ht = number(h, "target_hidden_size", int, None) or width // n
    if ht <= 0 or n * ht != width:
        ids = f" (config eagle_aux_hidden_state_layer_ids / target_layer_ids {stored})" if stored is not None else ""
        raise ConversionError(f"tensor fc reads {width} values, not {n} target layers{ids} x target hidden {ht}")
    if not MIN_TAPS <= n <= MAX_TAPS:
        raise refuse(f"{n} target-layer taps (capture layer ids {stored}, fc input {n} x {ht})",
                     f"this runtime's graph fuses {MIN_TAPS} to {MAX_TAPS}")
    return stored, ht


def _vocabulary(h: dict[str, Any], t: dict[str, np.ndarray], target: TargetInfo, vocab: int,
                notes: list[str]) -> tuple[Optional[np.ndarray], Optional[np.ndarray], int]:
    """(d2t as absolute ids or None, lm_head or None, draft vocabulary size); the tensors decide."""
    d2t, lm_head, embed = t.get("d2t"), t.get("lm_head"), t.get("embed_tokens")
    if d2t is not None:
        if d2t.ndim != 1 or d2t.dtype.kind not in "iu":
            raise ConversionError(f"tensor d2t must be a 1-D integer tensor, got {d2t.dtype} {d2t.shape}")
        d2t = d2t.astype(np.int64) + np.arange(len(d2t), dtype=np.int64)  # HF stores offsets
    in_range = d2t is None or (len(d2t) > 0 and d2t.min() >= 0 and d2t.max() < vocab)
    if lm_head is None and h.get("tie_word_embeddings") and embed is not None and in_range:
        lm_head = embed if d2t is None else embed[d2t]
        notes.append("no lm_head and tie_word_embeddings: the head's own embed_tokens serve as its lm_head")
    if lm_head is None and d2t is not None and in_range:
        if len(d2t) == vocab and np.array_equal(d2t, np.arange(vocab)):
            d2t = None  # the identity: the target's output matrix as it is
            notes.append("no lm_head and d2t is the identity: the head shares the target's output matrix")
        else:
            lm_head = output_rows(target, d2t)
            notes.append(f"no lm_head: its {len(d2t)} rows were taken from the target's output matrix at the d2t ids")
    draft_vocab = len(d2t) if d2t is not None else (lm_head.shape[0] if lm_head is not None else vocab)
    stated = configured_draft_vocab(h)
    if stated is not None and stated != draft_vocab:
        notes.append(f"warning: config draft_vocab_size {stated} contradicts the weights: using {draft_vocab}")
    return d2t, lm_head, draft_vocab


def _load_hf_head(path: Path, target: TargetInfo, convention: Optional[Convention],
                  explicit_layers: Optional[list[int]]) -> Eagle3Head:
    config = _read_config(path)
    h = merged_hparams(config)
    refuse_unsupported(config, h)
    notes: list[str] = []
    weights = read_weights(path)
    _refuse_quantized(config, weights, notes)
    t = _canonical_tensors(weights, notes)
    layout = detect_layout(config, any(split_name(n)[0] is not None for n in weights))
    missing = [k for k in ("fc", "norm", *_LAYER_TENSORS.values()) if k not in t]
    if missing:
        raise ConversionError(f"head is missing tensor(s) {', '.join(missing)} (layout {layout})")
    stated_layers = h.get("num_hidden_layers")
    if stated_layers not in (None, 1):
        notes.append(f"config num_hidden_layers {stated_layers} is not the head's: its weights hold one decoder layer")

    if layout == "speculators" and flag(config, "norm_before_residual") is None:
        notes.append("warning: the speculators config omits norm_before_residual: using false, the default of "
                     "speculators' Eagle3SpeculatorConfig (vLLM assumes true for such configs)")
    n_head, n_kv, head_dim = _attention_shape(h, t, notes)
    rope_theta, rope_scaling = rope_settings(h, notes)
    stored, target_hidden = _taps(config, h, t["fc"])
    ids, how = resolve_layer_ids(stored, layout, target.n_layer, convention, explicit_layers)
    if len(ids) != t["fc"].shape[1] // target_hidden:
        raise ConversionError(f"{len(ids)} target layers {list(ids)} but fc reads {t['fc'].shape[1] // target_hidden} "
                              f"taps of {target_hidden}")
    vocab = number(h, "vocab_size", int, None) or target.n_vocab
    d2t, lm_head, draft_vocab = _vocabulary(h, t, target, vocab, notes)

    config_out = Eagle3Config(
        hidden_size=number(h, "hidden_size", int, None) or int(t["norm"].shape[0]),
        intermediate_size=number(h, "intermediate_size", int, None) or int(t["gate_proj"].shape[0]),
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        head_dim=head_dim,
        rms_norm_eps=number(h, "rms_norm_eps", float, 1e-6),
        rope_theta=rope_theta,
        target_hidden_size=target_hidden,
        vocab_size=vocab,
        draft_vocab_size=draft_vocab,
        target_layers=ids,
        max_position_embeddings=number(h, "max_position_embeddings", int, 4096),
        rope_scaling=rope_scaling,
        norm_before_residual=bool(flag(config, "norm_before_residual")),
        norm_before_fc=bool(flag(config, "norm_before_fc")) or "enc_norm" in t,
        norm_output=bool(flag(config, "norm_output")),
        fc_norm=bool(flag(config, "fc_norm")) or "tap_norm" in t,
    )
    head = Eagle3Head(
        config=config_out, fc=t["fc"], d2t=d2t, lm_head=lm_head, embed_tokens=t.get("embed_tokens"),
        enc_norm=t.get("enc_norm"), norm=t["norm"], **{v: t.get(v) for v in VARIANT_TENSORS},
        **{v: t[v] for v in _LAYER_TENSORS.values()},
        extra={"layout": layout, "layer_ids": how, "notes": notes},
    )
    head.validate()
    return head
