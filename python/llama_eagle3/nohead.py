"""The engine without a head: `Llama(model, eagle3_head="ngram")` drafts n-gram copies alone.

No model drafts and no hidden state is read, so the engine runs in its plain fallback for good
(engine.Engine.plain_stretch): llama-cpp-python's own eval and sampler token by token, and a
verify round wherever an n-gram copy's measured acceptance pays for its rows (ngram.py). The two
stand-ins below take the head drafter's and the capture's places in that loop.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

import llama_cpp

NGRAM_ONLY = "ngram"  # the eagle3_head value that asks for n-gram copies without a head


class NoHeadDrafter:
    """Tracks how far the target decoded (feature_end) and never drafts."""
    name = "none"

    def __init__(self) -> None:
        self.feature_end = 0
        self.n_pending = 0

    def reset(self) -> None:
        self.feature_end = 0

    def observe(self, features: np.ndarray, input_ids: np.ndarray) -> None:
        self.feature_end += len(features)

    def skip(self, n: int) -> None:
        self.feature_end += n

    def forget(self, window: int) -> None:
        pass

    def truncate(self, m: int) -> int:
        self.feature_end = min(m, self.feature_end)
        return self.feature_end

    def propose(self, input_ids: np.ndarray, next_token: int, n_max: int, p_min: float) -> list[int]:
        return []

    def close(self) -> None:
        pass


class NoCapture:
    """Decodes like llama-cpp-python's eval and captures nothing."""

    def decode(self, llm: llama_cpp.Llama, chunk: Sequence[int], n_past: int, first_logit: int,
               capture: bool = True) -> Optional[np.ndarray]:
        llm._batch.set_batch(batch=chunk, n_past=n_past, logits_all=llm._logits_all)
        for j in range(max(first_logit, 0), len(chunk)):
            llm._batch.batch.logits[j] = True
        llm._ctx.decode(llm._batch)
        return None

    def suspend(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def begin(self) -> None:
        pass
