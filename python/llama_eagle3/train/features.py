"""The target's three hidden states for every token of the training samples: fp16 shards.

Captured with the runtime's own FeatureCapture on the same GGUF, so the head trains on
exactly the activations it sees at inference (quantization included).

Shard layout (features/shard-NNNNN.npz):
  tokens   int32 [N]      prompt + response tokens of several samples, concatenated
  starts   int64 [S + 1]  sample s is tokens[starts[s]:starts[s+1]]
  loss     uint8 [N]      1 where the token is part of a response
  feats    f16 [N, 3*Ht]  low|mid|high states at each position (llama.cpp "input of layer")
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .._native import llama_cpp
from ..capture import FeatureCapture


class FeatureExtractor:
    def __init__(self, model_path: str, layer_ids: Sequence[int], n_ctx: int, n_threads: int):
        self.llm = llama_cpp.Llama(model_path, n_ctx=n_ctx, n_batch=512, n_threads=n_threads, verbose=False,
                                   flash_attn=True)
        m = self.llm.model
        self.n_embd = int(llama_cpp.llama_model_n_embd(m))
        arch = str(self.llm.metadata.get("general.architecture", "unknown"))
        self.capture = FeatureCapture(arch, layer_ids, self.n_embd, int(llama_cpp.llama_model_n_layer(m)))
        self.capture.attach_to(self.llm)

    def features(self, tokens: Sequence[int]) -> np.ndarray:
        """[T, 3*Ht] float32 for one sequence, decoded from position 0 in n_batch chunks."""
        llm = self.llm
        llm.reset()
        llm._ctx.kv_cache_clear()
        rows = [self.capture.decode(llm, list(tokens[i : i + llm.n_batch]), i, llm.n_batch)
                for i in range(0, len(tokens), llm.n_batch)]
        return np.concatenate(rows)


def write_shards(out_dir: Path, samples: Iterable[tuple[list[int], list[int]]], extractor: FeatureExtractor,
                 tokens_per_shard: int = 32768) -> int:
    """Writes shards for (prompt, response) samples; returns the number of tokens written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    buf: list[tuple[list[int], np.ndarray, np.ndarray]] = []
    n_buf = total = shard = 0

    def flush() -> None:
        nonlocal buf, n_buf, shard
        if not buf:
            return
        toks = np.concatenate([np.asarray(t, np.int32) for t, _, _ in buf])
        starts = np.cumsum([0] + [len(t) for t, _, _ in buf]).astype(np.int64)
        tmp = out_dir / f"shard-{shard:05d}.tmp.npz"
        np.savez(tmp, tokens=toks, starts=starts, loss=np.concatenate([m for _, m, _ in buf]),
                 feats=np.concatenate([f for _, _, f in buf]).astype(np.float16))
        tmp.rename(out_dir / f"shard-{shard:05d}.npz")
        buf, n_buf, shard = [], 0, shard + 1

    for prompt, response in samples:
        if not response:
            continue
        tokens = list(prompt) + list(response)
        mask = np.zeros(len(tokens), np.uint8)
        mask[len(prompt):] = 1
        buf.append((tokens, mask, extractor.features(tokens)))
        n_buf += len(tokens)
        total += len(tokens)
        if n_buf >= tokens_per_shard:
            flush()
    flush()
    return total


def read_shards(feature_dir: Path) -> Iterator[dict[str, np.ndarray]]:
    for p in sorted(Path(feature_dir).glob("shard-*.npz")):
        if not p.name.endswith(".tmp.npz"):
            with np.load(p) as z:
                yield {k: z[k] for k in z.files}
