"""Drafting with the target's own NextN (MTP) layer: `Llama(model, eagle3_head="mtp")`.

Models such as GLM-4.5/4.6/4.7, DeepSeek-V3, MiMo-V2 and Qwen3.5 carry multi-token-prediction
layers in their GGUF (`blk.{block_count-1}.nextn.*`). llama.cpp runs them in a second context on
the same model (context type MTP; the model loaded with load_mtp). The target exposes its NextN
input state h[p] for every position it decodes (llama_set_embeddings_nextn, unmasked: one row per
batch token); the MTP layer reads pairs (token[p+1], h[p]) at position p+1 and predicts the
token at p+2 (logits) and its own state for the next step.

State (pending.PendingFeatures, in step with the target's KV cache; feature f[p] = h[p]):

    MTP KV    pairs (token[p+1], f[p]) at positions p+1 for p in [head_start, head_n)
    pending   f rows of [head_n, feature_end)

propose(next_token), next_token being the target's token at feature_end: one decode of every
pending pair (the last pairs f[feature_end-1] with next_token), then a chain: step i decodes
(d_i, the MTP layer's own state of the previous step) at position feature_end + i; the draft
d_{i+1} is the argmax, kept while its probability is at least p_min. The chain's cells are
removed right after (the next round's pairs start at feature_end + 1 again). truncate(m) keeps
the pairs whose token the target keeps; the pair of the last kept feature f[m-1] needs token[m],
so a rollback into the consumed pairs re-derives position m-1 (as proposer.py's EAGLE-3 does).
Drafts are verified, so none of this changes output, only speed.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from ._native import llama_cpp
from .pending import PendingFeatures

import llama_cpp.llama_cpp as llama_lib  # the module llama_cpp.Llama calls
import llama_cpp.llama_cpp_ext as ext

from eagle3_convert.errors import ConversionError
from eagle3_convert.gguf_header import read_gguf_header

MTP = "mtp"  # the eagle3_head value that asks for the target's own NextN layers

# vendored llama.cpp (0c1e57098): the architectures whose model has an MTP graph
# (LLM_GRAPH_TYPE_DECODER_MTP in src/models/*.cpp), split by how their state rolls back
MTP_ARCHS = frozenset({"glm4moe", "glm-dsa", "glm5-next", "deepseek2", "deepseek32", "deepseek4", "mimo2",
                       "step35", "hy_v3", "bailingmoe3", "cohere2moe"})
MTP_HYBRID_ARCHS = frozenset({"qwen35", "qwen35moe", "qwen3next", "nemotron_h_moe"})  # recurrent layers
TESTED_ARCHS = frozenset({"glm4moe"})  # drafted in this project's tests (synthetic_mtp.py)


def mtp_support(path: Path) -> tuple[str, Optional[str]]:
    """(architecture, None) if llama.cpp can draft with the target's NextN layers, else (architecture,
    why not), read from the GGUF header (llama.cpp aborts the process on a missing NextN tensor).
    Raises ValueError for an unreadable file."""
    try:
        meta, tensors = (h := read_gguf_header(Path(path))).meta, set(h.tensors)
        for other in _other_splits(Path(path), int(meta.get("split.count", 1) or 1)):
            tensors |= set(read_gguf_header(other).tensors)
    except (ConversionError, OSError) as e:
        raise ValueError(f'eagle3_head="mtp": cannot read {path}: {e}') from None
    arch = str(meta.get("general.architecture", "unknown"))
    n_nextn = int(meta.get(f"{arch}.nextn_predict_layers", 0) or 0)
    probe = f"blk.{int(meta.get(f'{arch}.block_count', 0) or 0) - 1}.nextn.eh_proj.weight"
    if n_nextn == 0:
        return arch, f"it has no NextN (MTP) layers ({arch}.nextn_predict_layers is absent or 0)"
    if probe not in tensors:
        return arch, f"its metadata declares {n_nextn} NextN layers but it has no {probe} (a trunk-only conversion)"
    if arch not in MTP_ARCHS | MTP_HYBRID_ARCHS:
        return arch, f"llama.cpp has no MTP graph for architecture {arch!r}, though the file carries NextN layers"
    return arch, None


def _other_splits(path: Path, count: int) -> list[Path]:
    """The other files of a split GGUF (llama.cpp's names: <prefix>-00001-of-0000N.gguf)."""
    m = re.fullmatch(r"(.*)-(\d{5})-of-(\d{5})\.gguf", path.name)
    if count <= 1 or m is None:
        return []
    names = [f"{m[1]}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    return [path.with_name(n) for n in names if n != path.name]


def check_mtp_target(path: Path) -> str:
    """The target's architecture if llama.cpp can draft with its NextN layers, else ValueError why."""
    arch, why = mtp_support(path)
    if why is not None:
        raise ValueError(f'eagle3_head="mtp": {path} cannot draft for itself: {why}. Use a GGUF with NextN layers '
                         f'(docs/mtp.md), an EAGLE-3 or DFlash head, or eagle3_head="ngram"')
    return arch


_load_lock = threading.Lock()


@contextlib.contextmanager
def loading_nextn_layers() -> Iterator[None]:
    """While active, model params made by llama-cpp-python (llama_cpp.Llama builds its own from
    llama_model_default_params, with no argument for it) ask llama.cpp to load the NextN layers
    too (load_mtp; by default it skips them). Held for one model load."""
    default = llama_lib.llama_model_default_params

    def with_nextn() -> "llama_lib.llama_model_params":
        params = default()
        params.load_mtp = True
        return params

    with _load_lock:
        llama_lib.llama_model_default_params = with_nextn
        try:
            yield
        finally:
            llama_lib.llama_model_default_params = default


def _row(a: np.ndarray) -> "llama_cpp.llama_embd":
    return llama_cpp.llama_embd(a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), 1, a.shape[-1])


class NextnCapture:
    """The target's NextN input states h[p] ([n, n_embd]) of the positions it decodes."""

    def __init__(self, n_embd: int):
        self.n_embd = n_embd
        self._ctx: Optional[object] = None

    def bind(self, ctx: object) -> None:
        """Captures from this target context from now on (unmasked: a row per batch token)."""
        self._ctx = ctx
        ext.llama_set_embeddings_nextn(ctx, True, False)

    def decode(self, llm: "llama_cpp.Llama", chunk: Sequence[int], n_past: int, first_logit: int,
               capture: bool = True) -> Optional[np.ndarray]:
        """capture.FeatureCapture.decode's contract: one llama_decode of chunk at n_past.., logits on
        rows first_logit.., and the chunk's h rows (a copy) unless capture is False."""
        llm._batch.set_batch(batch=chunk, n_past=n_past, logits_all=llm._logits_all)
        for j in range(max(first_logit, 0), len(chunk)):
            llm._batch.batch.logits[j] = True
        llm._ctx.decode(llm._batch)
        if not capture:
            return None
        h = ext.llama_get_embeddings_nextn(self._ctx)
        if not h:
            raise RuntimeError("llama.cpp returned no NextN states for the target's decode")
        return np.ctypeslib.as_array(h, shape=(len(chunk), self.n_embd)).copy()

    def suspend(self) -> None:
        """No states until resume(): the target's last layer then runs on the output rows only,
        as in plain decoding (switching costs a graph rebuild at the next decode)."""
        ext.llama_set_embeddings_nextn(self._ctx, False, False)

    def resume(self) -> None:
        ext.llama_set_embeddings_nextn(self._ctx, True, False)

    def begin(self) -> None:
        pass


class MtpDrafter(PendingFeatures):
    """The Eagle3Proposer interface (engine.py calls it the same way) over the target's NextN layer."""

    name = "mtp"  # a round's source in speculative_stats()["drafters"]

    def __init__(self, model: object, target_ctx: object, n_embd: int, n_ctx: int, n_batch: int,
                 n_threads: int, n_threads_batch: int, catch_up_rows: int):
        self.row_width = n_embd
        self.catch_up_rows = catch_up_rows  # pending rows that trigger an eager decode (long prompts)
        self._ctx = self._batch = None
        cp = llama_cpp.llama_context_default_params()
        cp.ctx_type = llama_cpp.LLAMA_CONTEXT_TYPE_MTP
        cp.ctx_other = target_ctx
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, n_batch, n_batch
        cp.n_threads, cp.n_threads_batch = n_threads, n_threads_batch
        cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        cp.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(model, cp)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not make an MTP context for the target's NextN layer")
        ext.llama_set_embeddings_nextn(self._ctx, True, True)  # the layer's own state, output rows only
        self.n_batch = int(llama_cpp.llama_n_batch(self._ctx))
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model)))
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_ext_init(self._ctx)
        self.n_steps = 0  # MTP decodes that drafted a token (stats)
        self.reset()

    # ---- state ------------------------------------------------------------------------

    def _clear_kv(self) -> None:
        llama_cpp.llama_memory_clear(self._mem, True)

    def observe(self, features: np.ndarray, input_ids: np.ndarray) -> None:
        """Target states [m, n_embd] of positions [feature_end, feature_end + m) (kept, not copied);
        input_ids: the target's tokens (at least through position feature_end + m - 1)."""
        if len(features) == 0:
            return
        self._add_pending(features)
        if self._n_pending > self.catch_up_rows:  # a long prompt: decode all but the last pair now
            rows = self._pending_rows()
            n = len(rows) - 1
            self._decode_pairs(input_ids[self.head_n + 1 : self.head_n + 1 + n], rows[:n], self.head_n + 1, False)
            self.head_n += n
            self._pending, self._n_pending = [rows[n:]], 1

    def truncate(self, m: int) -> int:
        """The target keeps [0, m); returns how many it may keep (<= m) so that every kept position
        from head_start on has its state here: pending, or paired with a token the target keeps."""
        if m > self.head_n:  # the tokens of every consumed pair (positions <= head_n) stay
            m = min(m, self.feature_end)
            keep = m - self.head_n
            if self._n_pending > keep:
                self._pending, self._n_pending = [self._pending_rows()[:keep]], keep
            return m
        if m <= self.head_start:
            self._restart(m)
            return m
        # the pair of f[m-1] holds token[m], which the target drops: re-derive position m-1
        self.head_n = m - 1
        self._pending, self._n_pending = [], 0
        llama_cpp.llama_memory_seq_rm(self._mem, 0, self.head_n + 1, -1)
        return self.head_n

    # ---- llama.cpp --------------------------------------------------------------------

    def _decode_pairs(self, tokens: Sequence[int], states: np.ndarray, pos0: int, last_output: bool) -> None:
        """Pairs (tokens[i], states[i]) at positions pos0 + i, n_batch per decode; logits and the
        layer's state on the very last row when last_output."""
        states = np.ascontiguousarray(states, dtype=np.float32)
        for i in range(0, len(tokens), self.n_batch):
            llama_cpp.llama_batch_ext_clear(self._batch)
            end = min(i + self.n_batch, len(tokens))
            for j in range(i, end):
                t = int(tokens[j])
                if not 0 <= t < self.n_vocab:
                    raise ValueError(f"token id {t} is outside the vocabulary of {self.n_vocab}")
                idx = llama_cpp.llama_batch_ext_add_token(self._batch, 0, t)
                ok = idx == j - i and llama_cpp.llama_batch_ext_set_pos(self._batch, idx, (llama_cpp.llama_pos * 1)(pos0 + j)) \
                    and llama_cpp.llama_batch_ext_set_embd_token(self._batch, idx, _row(states[j]))
                if ok and last_output and j == len(tokens) - 1:
                    ok = llama_cpp.llama_batch_ext_set_output_logits(self._batch, idx, True)
                if not ok:
                    raise RuntimeError("could not build the MTP batch")
            rc = llama_cpp.llama_process(self._ctx, llama_cpp.LLAMA_PROCESS_TYPE_DECODE, self._batch)
            if rc != 0:  # states (the array) stay alive through the call
                raise RuntimeError(f"the MTP decode failed (llama_process returned {rc})")

    def _top(self, p_min: float) -> tuple[int, bool]:
        """The argmax of the latest decode's output row and whether its probability is >= p_min."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, -1), shape=(self.n_vocab,))
        best = int(logits.argmax())
        sure = p_min <= 0.0 or 1.0 / float(np.exp(logits - logits[best]).sum()) >= p_min
        return best, sure

    def _state(self) -> np.ndarray:
        h = ext.llama_get_embeddings_nextn_ith(self._ctx, -1)
        return np.ctypeslib.as_array(h, shape=(1, self.row_width)).copy()

    # ---- drafting ---------------------------------------------------------------------

    def propose(self, input_ids: np.ndarray, next_token: int, n_max: int, p_min: float) -> list[int]:
        """Up to n_max drafts following next_token (the target's token at feature_end); [] without
        pending states (after a skip: the MTP layer has no state to start from)."""
        if self._n_pending == 0 or n_max <= 0:
            return []
        rows = self._pending_rows()
        n = len(rows)
        tokens = np.empty(n, dtype=np.int64)
        tokens[: n - 1] = input_ids[self.head_n + 1 : self.head_n + n]
        tokens[n - 1] = next_token
        pos = self.head_n + n  # next_token's position, feature_end
        self._decode_pairs(tokens, rows, self.head_n + 1, True)
        self.head_n, self._pending, self._n_pending = pos, [], 0
        drafts: list[int] = []
        try:
            while True:
                token, sure = self._top(p_min)
                if not sure:
                    break
                drafts.append(token)
                if len(drafts) == n_max:
                    break
                self._decode_pairs([token], self._state(), pos + len(drafts), True)
                self.n_steps += 1
        finally:
            llama_cpp.llama_memory_seq_rm(self._mem, 0, pos + 1, -1)  # the chain's cells
        return drafts

    def propose_tree(self, input_ids: np.ndarray, next_token: int, depth: int, width: int, n_nodes: int):
        raise NotImplementedError("the MTP drafter drafts chains only: use eagle3_tree_width=1")

    def close(self) -> None:
        """Frees the MTP batch and context (before the target's context and model)."""
        if self._batch is not None:
            llama_cpp.llama_batch_ext_free(self._batch)
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
        self._ctx = self._batch = None
