"""convert-eagle3-gguf: an HF EAGLE-3 head -> llama.cpp `eagle3` GGUF, or an HF DFlash head ->
llama.cpp `dflash` GGUF (the kind is told from the head's config.json).

    convert-eagle3-gguf path/to/hf-head --target model.gguf --outfile head.gguf [--outtype f16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .errors import ConversionError
from .checkpoint import LazyTensor
from .dflash_config import head_kind
from .dflash_convert import convert_dflash
from .dflash_head import DFlashHead
from .gguf_io import GgufWeights, write_head_gguf
from .head import Eagle3Head, check_against_target, is_variant
from .layouts import load_hf_head
from .reference import decode, encode
from .roundtrip import LIMITS, relative_difference, vocabulary_roundtrip
from .target import load_target


LM_SAMPLE_ROWS = 2048  # draft-vocabulary rows whose logits the reference check computes


class _Loaded:
    """A head whose LazyTensor fields are read on each access: the reference math gets arrays."""

    def __init__(self, head: Eagle3Head):
        self._head = head

    def __getattr__(self, name: str) -> Any:
        return np.asarray(v) if isinstance(v := getattr(self._head, name), LazyTensor) else v

    def rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        return getattr(self._head, name)[rows]


class _LmSample:
    """A head's weights with lm_head cut to some rows: the reference check's logits over a sample."""

    def __init__(self, w: Union[_Loaded, GgufWeights], rows: np.ndarray):
        self._w, self.lm_head = w, w.rows("lm_head", rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._w, name)


def reference_roundtrip(original: Eagle3Head, written: GgufWeights, n: int = 8,
                        seed: int = 0) -> float:
    """Max relative difference of the reference outputs of the two heads on random inputs, at
    positions spread over the context (so that RoPE scaling of low frequencies shows), with the
    logits of at most LM_SAMPLE_ROWS draft tokens."""
    rng = np.random.default_rng(seed)
    c = original.config
    f = rng.standard_normal((n, c.n_taps * c.target_hidden_size))
    emb = rng.standard_normal((n, c.hidden_size))
    pos = np.linspace(0, c.max_position_embeddings - 1, n).astype(np.int64)
    rows = np.unique(np.linspace(0, c.draft_vocab_size - 1, min(LM_SAMPLE_ROWS, c.draft_vocab_size)).astype(np.int64))
    lm = None if original.lm_head is not None else rng.standard_normal((len(rows), c.hidden_size))
    out = []
    for head in (_Loaded(original), written):
        w = _LmSample(head, rows) if lm is None else head
        g = encode(w, head.config, f)
        logits, h = decode(w, head.config, emb, g, pos, lm_head=lm)
        out.append((g, logits, h))
    return max(relative_difference(a, b) for a, b in zip(*out))


def convert(head_path: Path, target: str, outfile: Path, outtype: str = "f16", convention: Optional[str] = None,
            target_layers: Optional[list[int]] = None, log=print) -> Union[Eagle3Head, DFlashHead]:
    if head_kind(head_path) == "dflash":
        if convention is not None or target_layers is not None:
            raise ConversionError("--layer-convention and --target-layers apply to EAGLE-3 heads only: a DFlash head "
                                  "stores its target layer ids (and their convention follows from its layout)")
        return convert_dflash(head_path, target, outfile, outtype, log)  # type: ignore[arg-type]
    tgt = load_target(target)
    head = load_hf_head(head_path, tgt, convention, target_layers)  # type: ignore[arg-type]
    check_against_target(head.config, tgt, head.embed_tokens is not None)
    for note in head.extra["notes"]:
        log(note if note.startswith("warning:") else f"note: {note}")
    log(f"layout: {head.extra['layout']}; target layers {list(head.config.target_layers)} "
        f"(llama.cpp 'input of layer' ids): {head.extra['layer_ids']}")
    log(f"target: {tgt.arch}, {tgt.n_layer} layers, hidden {tgt.n_embd}, vocab {tgt.n_vocab}; head hidden "
        f"{head.config.hidden_size}, draft vocab {head.config.draft_vocab_size}"
        f"{'' if head.lm_head is not None else ' (shares the target lm_head)'}"
        f"{'' if head.embed_tokens is not None else ', shares the target token embedding'}")
    if is_variant(head):
        log("note: the head has settings llama.cpp's eagle3 graph cannot run (4-5 taps, norm_output, fc_norm, q/k "
            "norms or biases): written as arch eagle3x, which llama-eagle3 runs in its own graph and upstream "
            "llama.cpp / llama-server refuse to load")
    write_head_gguf(head, tgt, outfile, outtype, progress=log)  # type: ignore[arg-type]
    written = GgufWeights(outfile)
    log(f"{outfile.stat().st_size / 1e9:.2f} GB written; reading it back for the reference check")
    err = max(reference_roundtrip(head, written), vocabulary_roundtrip(head, written))
    limit = LIMITS[outtype]
    log(f"reference check ({outtype}): max relative difference {err:.2e} (limit {limit:.0e})")
    if err > limit:
        raise ConversionError(f"{outfile}: the written head deviates from the checkpoint by {err:.2e}")
    log(f"wrote {outfile}")
    return head


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="convert-eagle3-gguf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("head", type=Path, help="HF head directory (config.json + safetensors/bin) or weights file")
    p.add_argument("--target", required=True, help="the target model: its GGUF file or HF directory")
    p.add_argument("--outfile", type=Path, required=True)
    p.add_argument("--outtype", choices=["f32", "f16", "bf16", "q8_0"], default="f16")
    p.add_argument("--layer-convention", choices=["input", "output"], default=None,
                   help="how the head's eagle_aux_hidden_state_layer_ids count: 'input' of layer i (vLLM, "
                        "speculators) or 'output' of layer i (SpecForge, AngelSlim); default: detected")
    p.add_argument("--target-layers", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="override the three capture layers, e.g. 2,16,29 (in --layer-convention, default input)")
    a = p.parse_args(argv)
    try:
        convert(a.head, a.target, a.outfile, a.outtype, a.layer_convention, a.target_layers)
    except ConversionError as e:
        print(f"convert-eagle3-gguf: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
