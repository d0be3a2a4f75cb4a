"""A test proposer that drafts the known plain-decoding continuation with deliberate mistakes,
so verification sees every acceptance length (a random head is almost never right)."""

from __future__ import annotations

import numpy as np


class OracleProposer:
    def __init__(self, inner, references: list[list[int]], error_rate: float, seed: int = 0):
        self.inner = inner
        self.references = references
        self.error_rate = error_rate
        self.rng = np.random.default_rng(seed)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def propose(self, input_ids, next_token, n_max, p_min):
        n = self.inner.feature_end
        self.inner.propose(input_ids, next_token, n_max, p_min)  # keep the head's own state moving
        context = [int(t) for t in input_ids[:n]] + [int(next_token)]
        for ref in self.references:
            if ref[: n + 1] == context:
                truth = ref[n + 1 : n + 1 + n_max]
                break
        else:
            return []
        drafts = [t if self.rng.random() >= self.error_rate else (t + 1) % 200 for t in truth]
        return drafts


def install(llm, references: list[list[int]], error_rate: float = 0.25, seed: int = 0) -> OracleProposer:
    oracle = OracleProposer(llm._spec, references, error_rate, seed)
    llm._spec = oracle
    return oracle
