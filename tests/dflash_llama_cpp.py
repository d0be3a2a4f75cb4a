"""llama.cpp's own `dflash` graph on a converted head, driven through llama-cpp-python 0.3.36's
low-level bindings the way common/speculative.cpp's draft-dflash drafter drives it:

  - the head loads as a model; its context gets the target's context as ctx_other (the graph
    takes the target's token embedding / output matrix from it when the head has none);
  - non-causal attention (llama_set_causal_attn(ctx, false); the GGUF also says
    dflash.attention.causal = false);
  - context rows: an EMBEDDING batch (llama_batch_ext_add_embd), one row per target position
    p holding the target's tap states at p concatenated in target_layers order, at position
    p; llama_process(DECODE) fuses them and writes K/V into the draft cache (no outputs);
  - the block: a TOKEN batch [last token, MASK x n-1] at positions p0..p0+n-1 with every
    row an output; llama_get_logits_ith(ctx, i) gives row i's logits over the TARGET
    vocabulary (a d2t head's draft logits scattered, -inf elsewhere).

llama.cpp aborts the process on a failed GGML_ASSERT, so every input is checked here first:
a non-causal batch must fit one ubatch, rows must have the graph's width, positions the
context, tokens the vocabulary.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

import llama_cpp
from eagle3_convert.gguf_header import read_gguf_header

GGML_TYPE_F32 = 0


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


class DFlashGraph:
    def __init__(self, head: Path, target: Path, n_ctx: int = 512, n_threads: int = 2, precise: bool = True):
        """precise: an f32 KV cache and no flash attention (CPU flash attention rounds K/V and the
        scores through f16); False: llama.cpp's defaults, as a runtime would run."""
        llama_cpp.llama_backend_init()
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = 0
        # no repacked weights: with the target's tensors in an extra buffer type (the AMX repack
        # on this CPU, SmolLM2's Q4_1/Q8_0), the block decode that reads them through ctx_other
        # segfaulted (llama-cpp-python 0.3.36)
        mp.use_extra_bufts = False
        self.target = llama_cpp.llama_model_load_from_file(str(target).encode(), mp)
        self.model = llama_cpp.llama_model_load_from_file(str(head).encode(), mp)
        _check(bool(self.target) and bool(self.model), f"llama.cpp could not load {target} or {head}")
        self.ctx_target = self._context(self.target, 64, n_threads, None, False)
        self.ctx = self._context(self.model, n_ctx, n_threads, self.ctx_target, precise)
        _check(bool(self.ctx_target) and bool(self.ctx), "llama.cpp could not make the contexts")
        llama_cpp.llama_set_causal_attn(self.ctx, False)
        self.n_ctx, self.n_ubatch = n_ctx, llama_cpp.llama_n_ubatch(self.ctx)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        # the bindings do not expose llama_model_target_layer_ids: the file's key says the tap count
        n_taps = len(read_gguf_header(Path(head)).meta["dflash.target_layers"])
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)
        self.row_width = n_taps * self.n_embd

    @staticmethod
    def _context(model, n_ctx: int, n_threads: int, other, precise: bool):
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
        cp.n_threads = cp.n_threads_batch = n_threads
        if other is not None:
            cp.ctx_other = other
        if precise:
            cp.type_k = cp.type_v = GGML_TYPE_F32
            cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.embeddings = other is not None  # the head's final-normed states (t_embd) besides the logits
        return llama_cpp.llama_init_from_model(model, cp)

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)

    def pos_max(self) -> int:
        return llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(self.ctx), 0)

    def drop_from(self, p: int) -> None:
        """Forget positions >= p: a block's rows stay in the cache after its decode, and a batch must
        start right after the cache's last position (llama.cpp refuses the batch otherwise)."""
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.ctx), 0, p, -1)

    def _process(self, batch) -> None:
        rc = llama_cpp.llama_process(self.ctx, llama_cpp.LLAMA_PROCESS_TYPE_DECODE, batch)
        _check(rc == 0, f"llama_process returned {rc}")

    def inject(self, features: np.ndarray, pos: np.ndarray) -> None:
        """Context rows features [m, n_taps*H], row j at position pos[j]."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        m = features.shape[0]
        _check(features.ndim == 2 and features.shape[1] == self.row_width,
               f"context rows must be {self.row_width} wide, got {features.shape}")
        _check(0 < m <= self.n_ubatch, f"{m} context rows: a non-causal batch must fit one ubatch ({self.n_ubatch})")
        _check(len(pos) == m and 0 <= min(pos) and max(pos) < self.n_ctx, "positions outside the context")
        batch = llama_cpp.llama_batch_ext_init(self.ctx)
        try:
            for j in range(m):
                row = features[j].ctypes.data_as(ctypes.POINTER(ctypes.c_float))
                idx = llama_cpp.llama_batch_ext_add_embd(batch, 0, llama_cpp.llama_embd(row, 1, self.row_width))
                _check(idx == j, f"llama_batch_ext_add_embd returned {idx}")
                p = (llama_cpp.llama_pos * 4)(int(pos[j]), int(pos[j]), int(pos[j]), 0)
                _check(llama_cpp.llama_batch_ext_set_pos(batch, j, p), "llama_batch_ext_set_pos failed")
            self._process(batch)
        finally:
            llama_cpp.llama_batch_ext_free(batch)

    def block(self, tokens: np.ndarray, p0: int) -> tuple[np.ndarray, np.ndarray]:
        """(logits [n, n_vocab], final-normed states [n, H]) of the block `tokens` at positions p0..p0+n-1."""
        n = len(tokens)
        _check(0 < n <= self.n_ubatch and p0 >= 0 and p0 + n <= self.n_ctx, "block outside the context")
        _check(all(0 <= int(t) < self.n_vocab for t in tokens), "block tokens outside the vocabulary")
        batch = llama_cpp.llama_batch_ext_init(self.ctx)
        try:
            for i, t in enumerate(tokens):
                _check(llama_cpp.llama_batch_ext_add_token(batch, 0, int(t)) == i, "llama_batch_ext_add_token failed")
                p = (llama_cpp.llama_pos * 1)(p0 + i)
                _check(llama_cpp.llama_batch_ext_set_pos(batch, i, p), "llama_batch_ext_set_pos failed")
                _check(llama_cpp.llama_batch_ext_set_output_logits(batch, i, True), "set_output_logits failed")
            self._process(batch)
        finally:
            llama_cpp.llama_batch_ext_free(batch)
        return self._rows(llama_cpp.llama_get_logits_ith, n, self.n_vocab), \
            self._rows(llama_cpp.llama_get_embeddings_ith, n, self.n_embd)

    def _rows(self, get, n: int, width: int) -> np.ndarray:
        return np.stack([np.ctypeslib.as_array(get(self.ctx, i), shape=(width,)).copy() for i in range(n)])

    def close(self) -> None:
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_free(self.ctx_target)
        llama_cpp.llama_model_free(self.model)
        llama_cpp.llama_model_free(self.target)
