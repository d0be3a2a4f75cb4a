"""Block drafting with a DFlash head ("where DFlash drafts are made"; docs/dflash.md).

A DFlash head reads the target's states at its taps and drafts a whole block in ONE forward
pass of llama.cpp's `dflash` graph. State, kept in step with the target's KV cache
(positions 0..n_tokens-1):

    head KV   context rows of positions [head_start, head_n): the row at p is f[p], the inputs
              of the head's target_layers (in that order) for the target's token AT p
    pending   f rows of [head_n, feature_end), not yet in the head's KV
    feature_end == the target's n_tokens while the two are in step
    head_start <= head_n <= feature_end; positions before head_start have no features here,
    and between calls the head's KV holds context rows only (no block cells)

Unlike EAGLE-3 (proposer.py), a context row pairs with no token: its K/V in every layer are
projected from f[p] alone (dflash.cpp's embedding-batch branch), so a rollback drops cells and
truncate() keeps every position the target keeps.

propose(next_token), next_token being the target's token at feature_end (its features do not
exist yet): the pending rows are injected (embedding batches of at most n_ubatch rows: a
non-causal batch over one ubatch aborts llama.cpp), then one decode of the token block
[next_token, MASK x n] at positions feature_end..feature_end+n, every row an output: row i's
logits (over the target's vocabulary; -inf outside a d2t head's ids) draft the token at
feature_end + i, greedily, up to the first row whose top-1 probability is below p_min. The
block's cells are removed right after, so the next batch starts after the last context row
(llama.cpp wants a sequence's batches contiguous).

forget(window) and skip(n) restart the head's context as proposer.py's do. Drafts are
verified, so none of this changes output, only speed.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Optional

import numpy as np

from ._native import llama_cpp
from .pending import PendingFeatures

from eagle3_convert.dflash_gguf import ARCH, MASK_KEY, layer_tensor_name, read_dflash_config
from eagle3_convert.dflash_head import (OPTIONAL_TOP, TOP_TENSORS, DFlashConfig,
                                        check_against_target, layer_shapes, top_shapes)
from eagle3_convert.errors import ConversionError
from eagle3_convert.gguf_header import read_gguf_header
from eagle3_convert.target import TargetInfo


def head_architecture(path: Path) -> Optional[str]:
    """general.architecture of a GGUF file (None when unreadable: the caller's checks say why)."""
    try:
        return read_gguf_header(Path(path)).meta.get("general.architecture")
    except (ConversionError, OSError, ValueError):
        return None


def check_dflash_gguf(path: Path, target: TargetInfo, draft_max: int) -> DFlashConfig:
    """Raises ConversionError naming what makes the file unusable with this target (keys, tensors,
    taps, width, vocabulary, block size) before llama.cpp sees it: its failed asserts abort."""
    header = read_gguf_header(Path(path))
    tensors, meta = header.tensors, header.meta
    # variants whose drafting differs (llama.cpp's convert_hf_to_gguf writes them; ours does not)
    for what, found in (("DFlash2 (a selector lattice, not logits)", "selector_hidden.weight" in tensors),
                        ("DSpark (Markov head, anchor-first blocks)", "markov_w1.weight" in tensors),
                        ("a DeepSeek-V4 DSpark backbone", f"{ARCH}.hyper_connection.count" in meta),
                        ("block-causal attention", meta.get(f"{ARCH}.attention.causal") is True)):
        if found:
            raise ConversionError(f"{path}: {what} is not supported by this runtime (DFlash heads only)")
    d2t_t = tensors.get("d2t")
    c = read_dflash_config(header.meta, header.path, d2t_t.ne[0] if d2t_t is not None else 0)
    check_against_target(c, target)  # width, vocabulary size, taps inside 1..n_layer-1
    expected = {TOP_TENSORS[f][0]: s for f, s in top_shapes(c).items()}
    expected.update({layer_tensor_name(i, f): s for i in range(c.num_layers) for f, s in layer_shapes(c).items()})
    optional = {TOP_TENSORS[f][0] for f in OPTIONAL_TOP}
    for name, shape in expected.items():
        t = tensors.get(name)
        if t is None:
            if name not in optional:
                raise ConversionError(f"{path}: DFlash GGUF is missing tensor {name}")
        elif tuple(reversed(t.ne)) != shape:
            raise ConversionError(f"{path}: tensor {name} has shape {tuple(reversed(t.ne))}, expected {shape}")
    has_output = "output.weight" in tensors
    if d2t_t is not None:
        d2t = header.read(d2t_t, np.int64)
        if not has_output:
            raise ConversionError(f"{path}: a reduced draft vocabulary (d2t) needs the head's own output.weight")
        if len(d2t) and (d2t.min() < 0 or d2t.max() >= target.n_vocab):
            raise ConversionError(f"{path}: tensor d2t maps to target ids outside the {target.n_vocab} tokens of the target")
    if "token_embd.weight" in tensors and not has_output:
        raise ConversionError(f"{path}: token_embd.weight without output.weight (llama.cpp would use the "
                              f"embedding as the output matrix)")
    if not 0 <= c.mask_token_id < target.n_vocab:
        raise ConversionError(f"{path}: {MASK_KEY} {c.mask_token_id} is outside the {target.n_vocab} tokens of the target")
    if draft_max > c.block_size - 1:
        raise ConversionError(f"eagle3_draft_max={draft_max}: a DFlash block holds the last token and up to "
                              f"block_size - 1 = {c.block_size - 1} drafts (dflash.block_size {c.block_size})")
    return c


class DFlashDrafter(PendingFeatures):
    """The Eagle3Proposer interface (engine.py calls it the same way) over a DFlash head."""

    name = "dflash"  # a round's source in speculative_stats()["drafters"]
    per_proposal = True  # one block decode per proposal, whatever its length: priced per proposal

    def __init__(self, path: Path, config: DFlashConfig, target_ctx: object, n_embd_target: int, n_ctx: int,
                 n_batch: int, n_threads: int, n_threads_batch: int, n_gpu_layers: int, catch_up_rows: int):
        self.config = config
        self.block_max = config.block_size - 1           # drafts one block can hold
        self.row_width = config.n_taps * n_embd_target   # floats per context row
        self.catch_up_rows = catch_up_rows               # pending rows that trigger an eager injection
        self.n_blocks = 0                                # block decodes so far (one per proposal)
        self._ctx = self._model = self._batch = None
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = n_gpu_layers
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load the DFlash head {path}")
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = cp.n_ubatch = n_batch  # a non-causal batch must fit one ubatch
        cp.n_threads, cp.n_threads_batch = n_threads, n_threads_batch
        cp.ctx_other = target_ctx  # the target's token embedding / output matrix when the head has none
        cp.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, cp)
        if not self._ctx:
            self.close()
            raise RuntimeError(f"llama.cpp could not make a context for the DFlash head {path}")
        llama_cpp.llama_set_causal_attn(self._ctx, False)
        self.n_ubatch = int(llama_cpp.llama_n_ubatch(self._ctx))
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self._model)))
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_ext_init(self._ctx)
        self.reset()

    # ---- state ------------------------------------------------------------------------

    def _clear_kv(self) -> None:
        llama_cpp.llama_memory_clear(self._mem, True)

    def observe(self, features: np.ndarray, input_ids: np.ndarray) -> None:
        """Target features [m, row_width] of positions [feature_end, feature_end + m) (kept, not
        copied). input_ids is not needed: a context row pairs with no token."""
        if len(features) == 0:
            return
        if features.shape[1] != self.row_width:
            raise ValueError(f"DFlash context rows must be {self.row_width} wide, got {features.shape[1]}")
        self._add_pending(features)
        if self._n_pending > self.catch_up_rows:  # a long prompt: inject now, bounded memory
            self._inject_pending()

    def truncate(self, m: int) -> int:
        """The target keeps [0, m); returns min(m, feature_end): every kept position from head_start
        on stays here (a context row depends on its own features only, so no row is re-derived)."""
        m = min(m, self.feature_end)
        if m >= self.head_n:
            keep = m - self.head_n
            if self._n_pending > keep:
                self._pending, self._n_pending = ([self._pending_rows()[:keep]] if keep else []), keep
        elif m <= self.head_start:
            self._restart(m)
        else:
            llama_cpp.llama_memory_seq_rm(self._mem, 0, m, -1)
            self.head_n, self._pending, self._n_pending = m, [], 0
        return m

    # ---- llama.cpp --------------------------------------------------------------------

    def _process(self, what: str) -> None:
        rc = llama_cpp.llama_process(self._ctx, llama_cpp.LLAMA_PROCESS_TYPE_DECODE, self._batch)
        if rc != 0:
            raise RuntimeError(f"DFlash head {what} failed (llama_process returned {rc})")

    def _inject_pending(self) -> None:
        """Every pending row into the head's KV at positions head_n.., n_ubatch rows per decode."""
        if self._n_pending == 0:
            return
        rows = np.ascontiguousarray(self._pending_rows(), dtype=np.float32)
        for i in range(0, len(rows), self.n_ubatch):
            llama_cpp.llama_batch_ext_clear(self._batch)
            for j in range(i, min(i + self.n_ubatch, len(rows))):
                row = rows[j].ctypes.data_as(ctypes.POINTER(ctypes.c_float))
                idx = llama_cpp.llama_batch_ext_add_embd(self._batch, 0, llama_cpp.llama_embd(row, 1, self.row_width))
                p = self.head_n + j
                if idx != j - i or not llama_cpp.llama_batch_ext_set_pos(self._batch, idx, (llama_cpp.llama_pos * 4)(p, p, p, 0)):
                    raise RuntimeError("could not build the DFlash context batch")
            self._process("context injection")  # rows (the array) stay alive through the call
        self.head_n += len(rows)
        self._pending, self._n_pending = [], 0

    def _decode_block(self, next_token: int, n: int, p_min: float) -> list[int]:
        """One decode of [next_token, MASK x n] at head_n..head_n+n; the greedy drafts; the block's
        cells removed afterwards."""
        tokens = [int(next_token)] + [self.config.mask_token_id] * n
        if not 0 <= tokens[0] < self.n_vocab:
            raise ValueError(f"token id {tokens[0]} is outside the DFlash head's vocabulary of {self.n_vocab}")
        p0 = self.head_n
        llama_cpp.llama_batch_ext_clear(self._batch)
        for i, t in enumerate(tokens):
            idx = llama_cpp.llama_batch_ext_add_token(self._batch, 0, t)
            if idx != i or not llama_cpp.llama_batch_ext_set_pos(self._batch, idx, (llama_cpp.llama_pos * 1)(p0 + i)) \
                    or not llama_cpp.llama_batch_ext_set_output_logits(self._batch, idx, True):
                raise RuntimeError("could not build the DFlash block batch")
        try:
            self._process("block decode")
            self.n_blocks += 1
            drafts: list[int] = []
            for i in range(1, n + 1):  # row 0 (next_token's own row) drafts nothing
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, i), shape=(self.n_vocab,))
                best = int(logits.argmax())
                # top-1 probability over the full vocabulary (a d2t head's -inf rows add exp(-inf) = 0)
                if p_min > 0.0 and 1.0 / float(np.exp(logits - logits[best]).sum()) < p_min:
                    break
                drafts.append(best)
            return drafts
        finally:
            llama_cpp.llama_memory_seq_rm(self._mem, 0, p0, -1)  # the KV holds context rows only again

    # ---- drafting ---------------------------------------------------------------------

    def propose(self, input_ids: np.ndarray, next_token: int, n_max: int, p_min: float) -> list[int]:
        """Up to n_max (<= block_size - 1) drafts following next_token (the target's token at
        feature_end), from one block decode; [] when the head has no context (after a skip)."""
        n = min(n_max, self.block_max)
        if n <= 0 or self.feature_end == self.head_start:
            return []
        self._inject_pending()
        return self._decode_block(next_token, n, p_min)

    def propose_tree(self, input_ids: np.ndarray, next_token: int, depth: int, width: int, n_nodes: int):
        raise NotImplementedError("a DFlash head drafts chains (blocks) only: use eagle3_tree_width=1")

    def close(self) -> None:
        """Frees the head's batch, context and model (before the target's context: ctx_other)."""
        if self._batch is not None:
            llama_cpp.llama_batch_ext_free(self._batch)
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
        self._ctx = self._model = self._batch = None
