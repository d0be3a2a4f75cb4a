"""HF DFlash checkpoints (z-lab and speculators layouts) -> the canonical DFlashHead.

Both layouts name tensors alike: `layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
self_attn.{q,k}_norm, post_attention_layernorm, mlp.{gate,up,down}_proj}`, `fc`,
`hidden_norm`, `norm`, optionally under `model.`; speculators adds `lm_head` + `d2t` (+ `t2d`)
for a reduced draft vocabulary. Neither stores embed_tokens as a rule: the target's
embedding serves the block rows and its output matrix the logits. Shapes come from the
weights; the config supplies the head count, the norm epsilon, RoPE, the taps, the block
size and the mask token (dflash_config.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import read_weights
from .dflash_config import DFlashSettings, settings
from .dflash_head import LAYER_TENSORS, TOP_TENSORS, DFlashConfig, DFlashHead, DFlashLayer
from .errors import ConversionError
from .hf_config import configured_draft_vocab, number, refuse, rope_settings
from .layouts import _attention_shape, _read_config, _refuse_quantized
from .target import TargetInfo, output_rows

_LAYER_NAME = re.compile(r"layers\.(\d+)\.(.+)")
_LAYER_HF = {hf: canon for canon, (_, hf) in LAYER_TENSORS.items()}
_TOP_HF = {hf: canon for canon, (_, hf) in TOP_TENSORS.items()}
_BIASES = {f"self_attn.{p}_proj.bias" for p in "qkvo"} | {f"mlp.{p}_proj.bias" for p in ("gate", "up", "down")}
# t2d: derivable from d2t; verifier_*: speculators' frozen copies of the target's (not saved as a rule)
_IGNORED = {"t2d", "verifier_norm.weight", "verifier_lm_head.weight", "self_attn.rotary_emb.inv_freq"}
_DFLASH2_PARTS = ("attention_conv.", "mlp_conv.", "candidate_selector.")
_DSPARK_PARTS = ("markov_head.", "confidence_head.", "markov_", "conf_proj")


def load_dflash_head(path: Path, target: TargetInfo) -> DFlashHead:
    """The head of an HF DFlash checkpoint directory (or weights file beside its config.json)."""
    try:
        return _load(Path(path), target)
    except ConversionError:
        raise
    except (TypeError, ValueError, AttributeError, IndexError, KeyError) as e:
        raise ConversionError(f"{path}: config.json or the weights hold a value of the wrong type or shape "
                              f"({type(e).__name__}: {e})") from None


def _split(name: str) -> tuple[Any, str]:
    key = name[len("model."):] if name.startswith("model.") else name
    m = _LAYER_NAME.fullmatch(key)
    return (int(m.group(1)), m.group(2)) if m else (None, key)


def _refuse_variant(name: str, sub: str) -> None:
    if sub.startswith(_DFLASH2_PARTS):
        raise refuse(f"a DFlash2 head (tensor {name}: candidate selector / dynamic convolutions)",
                     "this converter writes plain DFlash heads; use llama.cpp's convert_hf_to_gguf.py for DFlash2")
    if sub.startswith(_DSPARK_PARTS):
        raise refuse(f"a DSpark head (tensor {name}: Markov / confidence head)",
                     "this converter writes plain DFlash heads; use llama.cpp's convert_hf_to_gguf.py for DSpark")


def _drop_zero_bias(name: str, a: Any, notes: list[str]) -> None:
    if np.any(np.asarray(a)):
        raise refuse(f"attention/MLP/fc biases ({name} is not zero)", "llama.cpp's dflash graph has no biases")
    notes.append(f"{name} is all zeros: dropped")


def _sort_tensors(weights: dict[str, Any], notes: list[str]) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """(top-level canonical tensors, {layer index: canonical tensors}); refuses DFlash2 / DSpark parts."""
    top: dict[str, Any] = {}
    layers: dict[int, dict[str, Any]] = {}
    for name, arr in weights.items():
        layer, sub = _split(name)
        _refuse_variant(name, sub)
        if sub in _BIASES or sub == "fc.bias":
            _drop_zero_bias(name, arr, notes)
        elif layer is not None and sub in _LAYER_HF:
            layers.setdefault(layer, {})[_LAYER_HF[sub]] = arr
        elif layer is None and sub in _TOP_HF:
            top[_TOP_HF[sub]] = arr
        elif sub not in _IGNORED:
            raise ConversionError(f"unexpected tensor {name}: not part of a DFlash head llama.cpp can run")
    if sorted(layers) != list(range(len(layers))):
        raise ConversionError(f"decoder layers {sorted(layers)} are not numbered 0..{len(layers) - 1}")
    for i, t in layers.items():
        missing = [k for k in LAYER_TENSORS if k not in t]
        if missing:
            raise ConversionError(f"decoder layer {i} is missing tensor(s) {', '.join(missing)}")
    missing = [k for k in ("fc", "hidden_norm", "norm") if k not in top]
    if missing or not layers:
        raise ConversionError(f"head is missing tensor(s) {', '.join(missing or ['layers.0.*'])}")
    return top, layers


def _vocabulary(top: dict[str, Any], s: DFlashSettings, target: TargetInfo, vocab: int,
                notes: list[str]) -> tuple[Any, Any, int]:
    """(d2t as absolute ids or None, lm_head or None, draft vocabulary size)."""
    d2t, lm_head = top.get("d2t"), top.get("lm_head")
    if d2t is not None:
        if d2t.ndim != 1 or d2t.dtype.kind not in "iu":
            raise ConversionError(f"tensor d2t must be a 1-D integer tensor, got {d2t.dtype} {d2t.shape}")
        d2t = d2t.astype(np.int64) + np.arange(len(d2t), dtype=np.int64)  # HF stores offsets
        if len(d2t) == vocab and np.array_equal(d2t, np.arange(vocab)):
            d2t = None
            notes.append("d2t is the identity: dropped")
    if lm_head is None and d2t is not None and len(d2t) and d2t.min() >= 0 and d2t.max() < vocab:
        lm_head = output_rows(target, d2t)
        notes.append(f"no lm_head: its {len(d2t)} rows were taken from the target's output matrix at the d2t ids")
    draft_vocab = len(d2t) if d2t is not None else (lm_head.shape[0] if lm_head is not None else vocab)
    stated = s.draft_vocab_size or configured_draft_vocab(s.hparams)
    if stated is not None and stated != draft_vocab:
        notes.append(f"warning: config draft_vocab_size {stated} contradicts the weights: using {draft_vocab}")
    return d2t, lm_head, draft_vocab


def _check_fc(fc: Any, hidden: int, s: DFlashSettings) -> None:
    width = fc.shape[1] if fc.ndim == 2 else 0
    if width != len(s.target_layers) * hidden:
        raise ConversionError(f"tensor fc reads {width} values per context row, not {len(s.target_layers)} target "
                              f"layers ({s.layer_ids_note}) x hidden {hidden}")


def _load(path: Path, target: TargetInfo) -> DFlashHead:
    config = _read_config(path)
    s = settings(config)
    root = path if path.is_dir() else path.parent
    if (root / "mask_embedding.pt").exists():
        raise refuse("a separate mask embedding (mask_embedding.pt)",
                     "llama.cpp's convert_hf_to_gguf.py patches it into a full token embedding of the head")
    notes: list[str] = []
    weights = read_weights(path)
    _refuse_quantized(config, weights, notes)
    top, layer_tensors = _sort_tensors(weights, notes)
    h = s.hparams
    hidden = int(top["norm"].shape[0])
    _check_fc(top["fc"], hidden, s)
    n_head, n_kv, head_dim = _attention_shape(h, layer_tensors[0], notes)
    rope_theta, rope_scaling = rope_settings(h, notes)
    vocab = number(h, "vocab_size", int, None) or target.n_vocab
    d2t, lm_head, draft_vocab = _vocabulary(top, s, target, vocab, notes)
    stated_layers = number(h, "num_hidden_layers", int, None)
    if stated_layers not in (None, len(layer_tensors)):
        notes.append(f"warning: config num_hidden_layers {stated_layers} contradicts the weights: "
                     f"{len(layer_tensors)} decoder layers")
    c = DFlashConfig(
        hidden_size=hidden, intermediate_size=int(layer_tensors[0]["gate_proj"].shape[0]),
        num_layers=len(layer_tensors), num_attention_heads=n_head, num_key_value_heads=n_kv, head_dim=head_dim,
        rms_norm_eps=number(h, "rms_norm_eps", float, 1e-6), rope_theta=rope_theta, vocab_size=vocab,
        draft_vocab_size=draft_vocab, target_layers=s.target_layers, block_size=s.block_size,
        mask_token_id=s.mask_token_id, max_position_embeddings=number(h, "max_position_embeddings", int, 4096),
        rope_scaling=rope_scaling)
    head = DFlashHead(config=c, fc=top["fc"], hidden_norm=top["hidden_norm"], norm=top["norm"],
                      layers=[DFlashLayer(**layer_tensors[i]) for i in range(len(layer_tensors))],
                      lm_head=lm_head, embed_tokens=top.get("embed_tokens"), d2t=d2t,
                      extra={"layout": s.layout, "layer_ids": s.layer_ids_note, "notes": notes})
    head.validate()
    return head
