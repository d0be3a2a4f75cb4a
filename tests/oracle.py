"""A test proposer that drafts the known plain-decoding continuation with deliberate mistakes,
so verification sees every acceptance length (a random head is almost never right)."""

from __future__ import annotations

import numpy as np

from llama_eagle3.tree import DraftTree


class OracleProposer:
    def __init__(self, inner, references: list[list[int]], error_rate: float, seed: int = 0):
        self.inner = inner
        self.references = references
        self.error_rate = error_rate
        self.rng = np.random.default_rng(seed)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _truth(self, input_ids, next_token, n: int, n_max: int) -> list[int]:
        context = [int(t) for t in input_ids[:n]] + [int(next_token)]
        for ref in self.references:
            if ref[: n + 1] == context:
                return ref[n + 1 : n + 1 + n_max]
        return []

    def propose(self, input_ids, next_token, n_max, p_min):
        n = self.inner.feature_end
        self.inner.propose(input_ids, next_token, n_max, p_min)  # keep the head's own state moving
        truth = self._truth(input_ids, next_token, n, n_max)
        return [t if self.rng.random() >= self.error_rate else (t + 1) % 200 for t in truth]

    def propose_tree(self, input_ids, next_token, depth, width, n_nodes):
        """The known continuation (with mistakes) as a chain, each node with a wrong sibling;
        random scores decide which of the two comes first, so the accepted path leaves the
        first-child chain as often as it follows it."""
        n = self.inner.feature_end
        self.inner.propose_tree(input_ids, next_token, depth, width, n_nodes)  # the head's tree code runs too
        tree = DraftTree([], [], [], [])
        parent = -1
        for d, t in enumerate(self._truth(input_ids, next_token, n, depth), start=1):
            right = t if self.rng.random() >= self.error_rate else (t + 1) % 200
            for token in (right, (t + 2) % 200):
                tree.tokens.append(token)
                tree.parents.append(parent)
                tree.depth.append(d)
                tree.scores.append(-float(self.rng.random()) - d)
            parent = len(tree.tokens) - 2  # the chain continues under the `right` node
        return tree


def install(llm, references: list[list[int]], error_rate: float = 0.25, seed: int = 0) -> OracleProposer:
    oracle = OracleProposer(llm._engine.drafter, references, error_rate, seed)
    llm._engine.drafter = oracle
    return oracle
