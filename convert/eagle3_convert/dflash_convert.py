"""DFlash conversion: checkpoint -> GGUF, then the GGUF read back and checked against the
checkpoint through the NumPy reference (reference_dflash.py), as the EAGLE-3 path does."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from .dflash_gguf import DFlashGgufWeights, write_dflash_gguf
from .dflash_head import DFlashHead, check_against_target
from .dflash_layouts import load_dflash_head
from .errors import ConversionError
from .gguf_io import OutType
from .reference_dflash import draft_block
from .roundtrip import LIMITS, relative_difference, vocabulary_roundtrip
from .target import load_target

LM_SAMPLE_ROWS = 2048  # draft-vocabulary rows whose logits the reference check computes


def reference_roundtrip(original: DFlashHead, written: DFlashGgufWeights, n_ctx: int = 8, seed: int = 0) -> float:
    """Relative difference of the reference logits of the two heads on random context rows at
    positions spread over the context window and a block at its end (RoPE's low frequencies
    show), over at most LM_SAMPLE_ROWS draft-vocabulary rows."""
    rng = np.random.default_rng(seed)
    c = original.config
    n = c.block_size
    features = rng.standard_normal((n_ctx, c.n_taps * c.hidden_size))
    block = rng.standard_normal((n, c.hidden_size))
    p0 = max(c.max_position_embeddings - n, n_ctx)
    ctx_pos = np.linspace(0, p0 - 1, n_ctx).astype(np.int64)
    rows = np.unique(np.linspace(0, c.draft_vocab_size - 1, min(LM_SAMPLE_ROWS, c.draft_vocab_size)).astype(np.int64))
    shared = original.lm_head is None  # the target's matrix at run time: any matrix shows the head's part
    lm = rng.standard_normal((len(rows), c.hidden_size)) if shared else None
    a = draft_block(original, c, features, ctx_pos, block, p0, lm if shared else original.lm_head[rows])
    b = draft_block(written, written.config, features, ctx_pos, block, p0, lm if shared else written.rows("lm_head", rows))
    return relative_difference(a, b)


def convert_dflash(head_path: Path, target: str, outfile: Path, outtype: OutType = "f16",
                   log: Callable[[str], Any] = print) -> DFlashHead:
    tgt = load_target(target)
    head = load_dflash_head(head_path, tgt)
    c = head.config
    check_against_target(c, tgt)
    for note in head.extra["notes"]:
        log(note if note.startswith("warning:") else f"note: {note}")
    log(f"DFlash head, layout {head.extra['layout']}: {c.num_layers} layers, hidden {c.hidden_size}, block "
        f"{c.block_size}, mask token {c.mask_token_id}; target layers {list(c.target_layers)} (llama.cpp 'input of "
        f"layer' ids): {head.extra['layer_ids']}")
    log(f"target: {tgt.arch}, {tgt.n_layer} layers, hidden {tgt.n_embd}, vocab {tgt.n_vocab}; draft vocab "
        f"{c.draft_vocab_size}{'' if head.lm_head is not None else ' (shares the target lm_head)'}"
        f"{'' if head.embed_tokens is not None else ', shares the target token embedding'}")
    write_dflash_gguf(head, tgt, Path(outfile), outtype, progress=log)
    written = DFlashGgufWeights(Path(outfile))
    log(f"{Path(outfile).stat().st_size / 1e9:.2f} GB written; reading it back for the reference check")
    err = max(reference_roundtrip(head, written), vocabulary_roundtrip(head, written))
    log(f"reference check ({outtype}): max relative difference {err:.2e} (limit {LIMITS[outtype]:.0e})")
    if err > LIMITS[outtype]:
        raise ConversionError(f"{outfile}: the written head deviates from the checkpoint by {err:.2e}")
    log(f"wrote {outfile}")
    return head
