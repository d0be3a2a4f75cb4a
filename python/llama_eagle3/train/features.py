"""The target's three hidden states for every token of the training samples: fp16 shards.

Captured with the runtime's own FeatureCapture on the same GGUF while the target writes
its answers (distill.py), so the head trains on exactly the activations it sees at
inference (quantization included).

Shard layout (features/shard-NNNNN.npz):
  tokens   int32 [N]      prompt + response tokens of several samples, concatenated
  starts   int64 [S + 1]  sample s is tokens[starts[s]:starts[s+1]]
  ids      int64 [S]      the samples' indices in samples.jsonl
  loss     uint8 [N]      1 where the token is part of a response
  feats    f16 [N, 3*Ht]  low|mid|high states at each position (llama.cpp "input of layer")
  top_ids  int32 [N, K]   optional: the target's K most likely next tokens after each position
  top_logp f16 [N, K]     their log-probabilities (whole-vocabulary softmax); id -1 where the
                          target gave no distribution (prompt rows but the last, the last token)
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np


class ShardWriter:
    """Buffers samples and writes a shard every tokens_per_shard tokens (atomically)."""

    def __init__(self, out_dir: Path, tokens_per_shard: int = 32768):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.tokens_per_shard = tokens_per_shard
        self.shard = len(list(self.out_dir.glob("shard-*[0-9].npz")))
        self.buf: list[dict[str, np.ndarray]] = []

    def add(self, sample_id: int, prompt: list[int], response: list[int], feats: np.ndarray,
            top: Optional[tuple[np.ndarray, np.ndarray]] = None) -> list[int]:
        """Queues one sample (feats [len(prompt) + len(response), 3*Ht]; top: ids and log-probabilities
        [same rows, K]); returns the ids of the samples written when this completed a shard (else [])."""
        tokens = np.asarray(list(prompt) + list(response), np.int32)
        if len(feats) != len(tokens):
            raise ValueError(f"sample {sample_id}: {len(feats)} feature rows for {len(tokens)} tokens")
        if self.buf and ("top_ids" in self.buf[0]) != (top is not None):
            raise ValueError(f"sample {sample_id}: every sample of a shard needs the target's top-k, or none")
        mask = np.zeros(len(tokens), np.uint8)
        mask[len(prompt):] = 1
        rec = {"ids": np.int64(sample_id), "tokens": tokens, "loss": mask, "feats": feats.astype(np.float16, copy=False)}
        if top is not None:
            rec["top_ids"], rec["top_logp"] = top[0].astype(np.int32), top[1].astype(np.float16)
        self.buf.append(rec)
        if sum(len(r["tokens"]) for r in self.buf) >= self.tokens_per_shard:
            return self.flush()
        return []

    def flush(self) -> list[int]:
        """Writes the buffered samples; returns their ids."""
        if not self.buf:
            return []
        ids = [int(r["ids"]) for r in self.buf]
        tmp = self.out_dir / f"shard-{self.shard:05d}.tmp.npz"
        arrays = {k: np.concatenate([r[k] for r in self.buf]) for k in self.buf[0] if k != "ids"}
        np.savez(tmp, starts=np.cumsum([0] + [len(r["tokens"]) for r in self.buf]).astype(np.int64),
                 ids=np.asarray(ids, np.int64), **arrays)
        tmp.rename(self.out_dir / f"shard-{self.shard:05d}.npz")
        self.buf, self.shard = [], self.shard + 1
        return ids


def read_shards(feature_dir: Path) -> Iterator[dict[str, np.ndarray]]:
    for p in sorted(Path(feature_dir).glob("shard-*[0-9].npz")):
        with np.load(p) as z:
            yield {k: z[k] for k in z.files}
