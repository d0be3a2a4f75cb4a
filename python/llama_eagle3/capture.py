"""Choosing and installing the target hidden-state capture (see csrc/hidden_capture.h)."""

from __future__ import annotations

import contextlib
import ctypes
from typing import Literal, Optional, Sequence

import numpy as np

import llama_cpp._internals as internals

from ._native import core, llama_cpp

CaptureMode = Literal["auto", "hook", "builtin"]


def context_address(handle: object) -> int:
    """The address of a llama_context from llama_cpp's ctypes handle (an int or a c_void_p)."""
    if isinstance(handle, int):
        return handle
    value = ctypes.cast(handle, ctypes.c_void_p).value
    if not value:
        raise RuntimeError("llama.cpp context handle is null")
    return value

# Architectures whose llama.cpp graph (the version pinned in _native) records every
# layer's input in t_layer_inp, so llama_set_embeddings_layer_inp works for them.
# Asking any other architecture aborts the process; they use the graph hook.
BUILTIN_ARCHS = frozenset({"llama", "qwen3", "qwen3moe", "qwen35", "qwen35moe", "gpt-oss", "gemma4"})


class FeatureCapture:
    """The target states (one per capture layer: 3 for llama.cpp's eagle3 graph, 3..5 for an
    eagle3x head) of the positions the target decodes (decode(capture=False): none).

    take(n) after a llama_decode of n tokens returns [n, len(layer_ids)*Ht]: the states in
    layer_ids order, in the llama.cpp "input of layer" convention. Both paths take any number of
    ids: the hook matches node names, and llama.cpp's built-in extraction keeps one flag per layer
    (llama_context's embeddings_layer_inp, n_layer + 1 entries; no count limit).
    """

    def __init__(self, arch: str, layer_ids: Sequence[int], n_embd: int, n_layer: int, mode: CaptureMode = "auto"):
        bad = [i for i in layer_ids if not 1 <= i <= n_layer - 1]
        if bad:
            raise ValueError(f"capture layer ids {list(layer_ids)}: {bad} outside 1..{n_layer - 1} for a target "
                             f"with {n_layer} layers")
        if mode == "builtin" and arch not in BUILTIN_ARCHS:
            raise ValueError(f"llama.cpp's built-in layer extraction does not support architecture '{arch}'; "
                             f"use eagle3_capture='hook' (or 'auto')")
        self.mode: str = mode if mode != "auto" else ("builtin" if arch in BUILTIN_ARCHS else "hook")
        self.layer_ids = [int(i) for i in layer_ids]
        self.n_embd = n_embd
        self._hook = core.HookCapture(self.layer_ids, n_embd) if self.mode == "hook" else None

    def install(self, params) -> None:
        """Sets the hook as the eval callback of llama_context_params about to create a context."""
        if self._hook is not None:
            params.cb_eval = ctypes.cast(ctypes.c_void_p(core.HookCapture.callback_address),
                                         llama_cpp.ggml_backend_sched_eval_callback)
            params.cb_eval_user_data = ctypes.c_void_p(self._hook.user_data_address)

    def bind(self, ctx: object) -> None:
        """Captures from this context (made with install() on the hook path) from now on."""
        self._ctx = context_address(ctx)
        if self.mode == "builtin":
            core.builtin_set(self._ctx, self.layer_ids, True)

    def suspend(self) -> None:
        """Nothing is captured until resume(): the hook selects no node, and llama.cpp's built-in
        extraction is switched off (its layer inputs stop being graph outputs), so the target's
        decodes cost what plain llama-cpp-python's do. For long stretches only: switching the
        extraction costs a scheduler reserve (~3 ms on this project's CPU) at the next decode."""
        self.pause()
        if self.mode == "builtin":
            core.builtin_set(self._ctx, self.layer_ids, False)

    def resume(self) -> None:
        """Undoes suspend(); the next begin() selects the hook's nodes again."""
        if self.mode == "builtin":
            core.builtin_set(self._ctx, self.layer_ids, True)

    def begin(self) -> None:
        """Call before each llama_decode whose states take() reads."""
        if self._hook is not None:
            self._hook.begin()

    def pause(self) -> None:
        """Call before a llama_decode whose states nobody reads (until the next begin()): the hook
        selects no node, so the scheduler does not split the graph. llama.cpp's built-in
        extraction stays on and is not read: switching it makes llama.cpp reserve its scheduler
        again at the next decode (measured here on SmolLM2, CPU: ~3 ms, a fifth of a token),
        while leaving it on costs no measurable time per decode."""
        if self._hook is not None:
            self._hook.pause()

    def take(self, n: int) -> np.ndarray:
        """[n, len(layer_ids)*Ht] for the n rows of the latest llama_decode (one ubatch: batch order)."""
        if self._hook is not None:
            out = self._hook.take()
            if out.shape[0] != n:
                raise RuntimeError(f"hidden-state hook captured {out.shape[0]} rows for a decode of {n} tokens")
            return out
        return core.builtin_read(self._ctx, self.layer_ids, self.n_embd, n)

    def attach_to(self, llm: "llama_cpp.Llama", n_seq_max: int = 1) -> None:
        """Installs the capture in llm's target context. llama_cpp.Llama creates its context
        without an eval callback and with one sequence, so the hook path, and tree verification
        (n_seq_max > 1: one sequence per leaf, in a unified KV cache), make the context again
        (before anything was decoded)."""
        if self._hook is not None or n_seq_max > 1:
            llm._ctx.close()
            params = llm.context_params
            self.install(params)
            if n_seq_max > 1:
                params.n_seq_max = n_seq_max
                params.kv_unified = True
            llm._ctx = llm._stack.enter_context(contextlib.closing(
                internals.LlamaContext(model=llm._model, params=params, verbose=llm.verbose)))
            if llm._lora_adapter is not None:
                adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(llm._lora_adapter)
                scales = (ctypes.c_float * 1)(llm.lora_scale)
                if llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, adapters, 1, scales):
                    raise RuntimeError(f"Failed to set LoRA adapter from lora path: {llm.lora_path}")
            llm.n_tokens = 0
        self.bind(llm._ctx.ctx)

    def decode(self, llm: "llama_cpp.Llama", chunk: Sequence[int], n_past: int, first_logit: int,
               capture: bool = True) -> Optional[np.ndarray]:
        """One llama_decode of chunk at positions n_past.. in llm's context, with logits on rows
        first_logit.. (every row when llm has logits_all, the last row always), and the states
        it captured: [len(chunk), len(layer_ids)*Ht]; capture=False captures nothing (None)."""
        llm._batch.set_batch(batch=chunk, n_past=n_past, logits_all=llm._logits_all)
        for j in range(max(first_logit, 0), len(chunk)):
            llm._batch.batch.logits[j] = True
        if not capture:
            self.pause()
            llm._ctx.decode(llm._batch)
            return None
        self.begin()
        llm._ctx.decode(llm._batch)
        return self.take(len(chunk))
