"""The target answers prompts, many sequences per llama.cpp decode (continuous batching).

One llama.cpp context with n_seq sequences; each decode carries one token per active
sequence (or a prompt chunk). A finished sequence frees its KV and its slot takes the
next prompt.

With a FeatureCapture, the same decodes also record the three target states of every
position (the training features): no second pass over the samples. Captured row i must
be batch row i: llama.cpp's built-in extraction returns batch order, but the graph hook
sees ubatch order, which only a unified KV keeps equal to batch order (split_simple, one
ubatch per decode). So the hook path uses a unified KV; otherwise each sequence has its own
KV stream, whose attention spans only its own cells (a unified KV's attention spans every
sequence's cells: measured 92 -> 64 tokens/s as 16 answers grow). A sample's last token is never decoded: its row is zero (the head
never reads it: it would pair with the token after the end).

With keep_top = K, each logits row also yields the target's K most likely next tokens and their
log-probabilities (softmax over the whole vocabulary): row P of a sample holds the target's
distribution of token P+1, the soft label the head learns from. Rows without logits (all prompt
rows but the last, the last token) hold id -1.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from .._native import llama_cpp
from ..capture import FeatureCapture
from llama_cpp import llama_cpp as C

TopK = tuple[np.ndarray, np.ndarray]  # ids int32 [n, K], log-probabilities f16 [n, K]
OnDone = Callable[[int, list[int], Optional[np.ndarray], Optional[TopK]], None]


class BatchedGenerator:
    def __init__(self, llm: "llama_cpp.Llama", n_seq: int = 16, max_len: int = 768,
                 capture: Optional[FeatureCapture] = None):
        self.llm = llm
        self.capture = capture
        self.n_seq = n_seq
        self.max_len = max_len
        self.n_vocab = llm.n_vocab()
        params = C.llama_context_default_params()
        params.n_ctx = n_seq * max_len
        params.n_batch = max(512, n_seq)
        params.n_ubatch = params.n_batch
        params.n_seq_max = n_seq
        params.kv_unified = capture is not None and capture.mode == "hook"  # see above
        params.n_threads = llm.context_params.n_threads
        params.n_threads_batch = llm.context_params.n_threads_batch
        params.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.no_perf = True
        if capture is not None:
            capture.install(params)
        self.ctx = C.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the batched generation context")
        if capture is not None:
            capture.bind(self.ctx)
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

    def _decode(self, entries: list[tuple[int, int, int, bool]],
                feats: dict[int, np.ndarray]) -> dict[int, int]:
        """entries: (token, pos, seq, wants_logits), rows wanting logits last, in n_batch chunks
        counted from the end, so that the last chunk is a full one holding every logits row (at
        most n_seq <= n_batch). Returns seq -> batch index of its logits row in the last chunk.
        With a capture, feats[seq][pos] receives the states of every entry."""
        rows: dict[int, int] = {}
        n = len(entries)
        first = n % self.n_batch or self.n_batch
        for start, end in zip([0, *range(first, n, self.n_batch)], range(first, n + 1, self.n_batch)):
            chunk = entries[start:end]
            b = self.batch
            b.n_tokens = len(chunk)
            rows = {}
            for i, (tok, pos, seq, logits) in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
                b.seq_id[i][0] = seq
                b.logits[i] = logits
                if logits:
                    rows[seq] = i
            if self.capture is not None:
                self.capture.begin()
            rc = C.llama_decode(self.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} during batched generation")
            if self.capture is not None:
                states = self.capture.take(len(chunk))
                for i, (_, pos, seq, _) in enumerate(chunk):
                    feats[seq][pos] = states[i]
        return rows

    def generate(self, prompts: Sequence[list[int]], max_new: int, temperature: float = 0.0, top_k: int = 50,
                 seed: int = 0, on_done: Optional[OnDone] = None, keep_top: int = 0) -> list[list[int]]:
        """Responses (without the prompt, end-of-generation token dropped) to every prompt; greedy at
        temperature 0. on_done(i, response, features, top) is called as each finishes; features: the
        states of prompt + response, [len(prompt) + len(response), 3*Ht] f16 (None without a capture);
        top: the target's keep_top most likely next tokens at each of those rows (None when 0)."""
        rng = np.random.default_rng(seed)
        out: list[Optional[list[int]]] = [None] * len(prompts)
        queue = list(range(len(prompts)))[::-1]
        slots: dict[int, dict] = {}  # seq -> {"i", "pos", "resp"}
        pending: list[tuple[int, int, int, bool]] = []
        feats: dict[int, np.ndarray] = {}  # seq -> [max_len, 3*Ht] f16
        width = 3 * self.capture.n_embd if self.capture is not None else 0
        tops: dict[int, TopK] = {}  # seq -> ([max_len, K] ids, [max_len, K] log-probabilities)

        def fill() -> None:
            for seq in range(self.n_seq):
                if seq in slots or not queue:
                    continue
                i = queue.pop()
                toks = list(prompts[i])[: self.max_len - max_new - 1]
                C.llama_memory_seq_rm(self.mem, seq, -1, -1)
                slots[seq] = {"i": i, "pos": len(toks), "resp": [], "n_prompt": len(toks)}
                if width:
                    feats[seq] = np.zeros((self.max_len, width), np.float16)
                if keep_top:
                    tops[seq] = (np.full((self.max_len, keep_top), -1, np.int32),
                                 np.full((self.max_len, keep_top), -np.inf, np.float16))
                pending[:0] = [(t, p, seq, False) for p, t in enumerate(toks[:-1])]
                pending.append((toks[-1], len(toks) - 1, seq, True))

        fill()
        while slots:
            # prompt rows first, the rows that want logits last (so they share the final chunk)
            entries = sorted(pending, key=lambda e: e[3])
            pending.clear()
            rows = self._decode(entries, feats)
            for seq, row in rows.items():
                slot = slots[seq]
                logits = np.ctypeslib.as_array(C.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))
                tok = self._sample(logits, temperature, top_k, rng)
                if keep_top:
                    ids, logp = tops[seq]
                    ids[slot["pos"] - 1], logp[slot["pos"] - 1] = self._top(logits, keep_top)
                done = C.llama_vocab_is_eog(self.vocab, tok) or len(slot["resp"]) + 1 >= max_new
                if not C.llama_vocab_is_eog(self.vocab, tok):
                    slot["resp"].append(tok)
                if done or slot["pos"] + 1 >= self.max_len:
                    out[slot["i"]] = slot["resp"]
                    if on_done:
                        n = slot["n_prompt"] + len(slot["resp"])
                        top = tops.pop(seq) if keep_top else None
                        on_done(slot["i"], slot["resp"], feats.pop(seq)[:n].copy() if width else None,
                                None if top is None else (top[0][:n].copy(), top[1][:n].copy()))
                    del slots[seq]
                    C.llama_memory_seq_rm(self.mem, seq, -1, -1)
                else:
                    pending.append((tok, slot["pos"], seq, True))
                    slot["pos"] += 1
            fill()
        return [r or [] for r in out]

    @staticmethod
    def _top(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most likely tokens (any order) and their log-probabilities over the whole vocabulary."""
        top = np.argpartition(logits, -k)[-k:]
        m = float(logits.max())
        lse = m + float(np.log(np.exp(logits - m).sum()))
        return top.astype(np.int32), (logits[top] - lse).astype(np.float16)

    @staticmethod
    def _sample(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
        if temperature <= 0:
            return int(np.argmax(logits))
        top = np.argpartition(logits, -top_k)[-top_k:]
        z = logits[top].astype(np.float64) / temperature
        p = np.exp(z - z.max())
        return int(top[rng.choice(len(top), p=p / p.sum())])
