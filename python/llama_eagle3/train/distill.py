"""The target answers prompts, many sequences per llama.cpp decode (continuous batching).

One llama.cpp context with n_seq sequences; each decode carries one token per active
sequence (or a prompt chunk). A finished sequence frees its KV and its slot takes the
next prompt.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from .._native import llama_cpp
from llama_cpp import llama_cpp as C


class BatchedGenerator:
    def __init__(self, llm: "llama_cpp.Llama", n_seq: int = 16, max_len: int = 768):
        self.llm = llm
        self.n_seq = n_seq
        self.max_len = max_len
        self.n_vocab = llm.n_vocab()
        params = C.llama_context_default_params()
        params.n_ctx = n_seq * max_len
        params.n_batch = max(512, n_seq)
        params.n_ubatch = params.n_batch
        params.n_seq_max = n_seq
        params.kv_unified = False  # a KV stream per sequence: attention spans only its own cells
        params.n_threads = llm.context_params.n_threads
        params.n_threads_batch = llm.context_params.n_threads_batch
        params.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.no_perf = True
        self.ctx = C.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the batched generation context")
        self.n_batch = int(params.n_batch)
        self.batch = C.llama_batch_init(self.n_batch, 0, 1)
        self.mem = C.llama_get_memory(self.ctx)
        self.vocab = C.llama_model_get_vocab(llm.model)

    def close(self) -> None:
        if self.ctx:
            C.llama_batch_free(self.batch)
            C.llama_free(self.ctx)
            self.ctx = None

    def __del__(self) -> None:
        self.close()

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> dict[int, int]:
        """entries: (token, pos, seq, wants_logits), in n_batch chunks. Returns seq -> batch index of
        its logits row in the LAST chunk (rows needing logits are always placed last)."""
        rows: dict[int, int] = {}
        for start in range(0, len(entries), self.n_batch):
            chunk = entries[start : start + self.n_batch]
            b = self.batch
            b.n_tokens = len(chunk)
            rows = {}
            for i, (tok, pos, seq, logits) in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
                b.seq_id[i][0] = seq
                b.logits[i] = logits
                if logits:
                    rows[seq] = i
            rc = C.llama_decode(self.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} during batched generation")
        return rows

    def generate(self, prompts: Sequence[list[int]], max_new: int, temperature: float = 0.0, top_k: int = 50,
                 seed: int = 0, on_done: Optional[Callable[[int, list[int]], None]] = None) -> list[list[int]]:
        """Responses (without the prompt) to every prompt; greedy at temperature 0.
        on_done(i, response) is called as each finishes."""
        rng = np.random.default_rng(seed)
        out: list[Optional[list[int]]] = [None] * len(prompts)
        queue = list(range(len(prompts)))[::-1]
        slots: dict[int, dict] = {}  # seq -> {"i", "pos", "resp"}
        pending: list[tuple[int, int, int, bool]] = []

        def fill() -> None:
            for seq in range(self.n_seq):
                if seq in slots or not queue:
                    continue
                i = queue.pop()
                toks = list(prompts[i])[: self.max_len - max_new - 1]
                C.llama_memory_seq_rm(self.mem, seq, -1, -1)
                slots[seq] = {"i": i, "pos": len(toks), "resp": []}
                pending[:0] = [(t, p, seq, False) for p, t in enumerate(toks[:-1])]
                pending.append((toks[-1], len(toks) - 1, seq, True))

        fill()
        while slots:
            # prompt rows first, the rows that want logits last (so they share the final chunk)
            entries = sorted(pending, key=lambda e: e[3])
            pending.clear()
            rows = self._decode(entries)
            for seq, row in rows.items():
                slot = slots[seq]
                logits = np.ctypeslib.as_array(C.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))
                tok = self._sample(logits, temperature, top_k, rng)
                done = C.llama_vocab_is_eog(self.vocab, tok) or len(slot["resp"]) + 1 >= max_new
                if not C.llama_vocab_is_eog(self.vocab, tok):
                    slot["resp"].append(tok)
                if done or slot["pos"] + 1 >= self.max_len:
                    out[slot["i"]] = slot["resp"]
                    if on_done:
                        on_done(slot["i"], slot["resp"])
                    del slots[seq]
                    C.llama_memory_seq_rm(self.mem, seq, -1, -1)
                else:
                    pending.append((tok, slot["pos"], seq, True))
                    slot["pos"] += 1
            fill()
        return [r or [] for r in out]

    @staticmethod
    def _sample(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
        if temperature <= 0:
            return int(np.argmax(logits))
        top = np.argpartition(logits, -top_k)[-top_k:]
        z = logits[top].astype(np.float64) / temperature
        p = np.exp(z - z.max())
        return int(top[rng.choice(len(top), p=p / p.sum())])
