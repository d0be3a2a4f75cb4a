"""n-gram drafts: the context's own repeats ("where a copy is drafted"), no model call.

Text that repeats its context (a code edit, a quotation, a RAG answer, JSON echoed back)
continues the way it continued before. propose() finds the latest earlier occurrence of the
context's last `n_min` tokens (the pending token included), preferring the occurrence whose
match extends furthest back, and drafts the tokens that followed it.

Its acceptance is measured for free: every proposal, verified or not, is settled against the
tokens the target then committed (settle()), so the estimate per draft position does not wait
for the policy to pay for a verify round. A proposal made with t_n at position n drafts
positions n + 1 .. n + m; once the committed tokens reach the first mismatch (or the end), its
positions before the mismatch count as accepted, the mismatch as rejected, later ones unsampled.

choose() prices a chain of k of the drafted tokens like any draft (costs.py): the whole round
C(k) = T(k + 1) + o(k + 1) + the lookup's time, against plain decoding's T(1) + o(1), so an
n-gram draft is verified only where its measured acceptance pays for the rows.
"""

from __future__ import annotations

import time
import numpy as np

from .acceptance import Acceptance, expected_tokens
from .costs import CostTable, Ema

MAX_MATCH = 32  # tokens a match is extended backwards to rank candidates
CANDIDATES = 8  # latest occurrences of the key ranked by match length


class NgramDrafter:
    """State: a copy of the context it indexed (tokens[:len(tokens)], kept equal to the target's
    committed tokens at each propose()) and, for every n_min-gram starting at s with a token after
    it (s + n_min < len(tokens)), s in index[gram] (ascending). Amortised O(1) per token: a
    context that changed under it (prefix reuse, a truncation) is re-indexed from the first
    changed position only."""

    def __init__(self, k_max: int, n_min: int = 3, prior: float = 0.5):
        self.k_max, self.n_min, self.prior = k_max, n_min, prior
        self.alpha = [Acceptance(decay=0.95, fade=1.0) for _ in range(k_max)]
        self.lookup = Ema(0.9)            # seconds per propose()
        self._pending: list[tuple[int, list[int]]] = []  # unsettled proposals: (n, tokens for n + 1 ..)
        self.proposals = 0
        self._tokens: list[int] = []
        self._index: dict[tuple[int, ...], list[int]] = {}

    def reset(self) -> None:
        """Forgets the context and the unsettled proposals."""
        self._pending, self._tokens, self._index = [], [], {}

    # ---- proposing ------------------------------------------------------------------

    def propose(self, input_ids: np.ndarray, n: int, next_token: int) -> list[int]:
        """Up to k_max tokens that followed the latest, longest earlier match of the context
        input_ids[:n] + [next_token] (t_n at position n); [] when its last n_min tokens never
        occurred before. Settles earlier proposals first."""
        t0 = time.perf_counter()
        self._sync(input_ids, n)
        self.settle(input_ids, n)
        drafts = self._find(next_token)
        if drafts:
            self._pending.append((n, drafts))
            self.proposals += 1
        self.lookup.add(time.perf_counter() - t0)
        return drafts

    def truncate(self, m: int) -> None:
        """The target keeps positions [0, m): the indexed copy follows."""
        if m < len(self._tokens):
            self._drop_from(m)

    def _drop_from(self, m: int) -> None:
        toks, k = self._tokens, self.n_min
        for s in range(len(toks) - k - 1, m - k - 1, -1):               # grams followed by a dropped token
            if s >= 0:
                self._index[tuple(toks[s : s + k])].pop()
        del toks[m:]

    def _sync(self, input_ids: np.ndarray, n: int) -> None:
        """Brings the indexed copy to input_ids[:n]: positions from the first difference on are
        dropped (their grams unindexed, latest first), then the new ones added. The engine reports
        every change of the target's context (truncate, reset); a spot check of two positions
        catches any other (drafts are verified, so a stale copy costs speed, never output)."""
        toks, k = self._tokens, self.n_min
        m = min(len(toks), n)
        if m and (toks[m - 1] != input_ids[m - 1] or toks[max(m - 64, 0)] != input_ids[max(m - 64, 0)]):
            same = np.flatnonzero(np.asarray(toks[:m]) != input_ids[:m])
            m = int(same[0]) if len(same) else m
        self._drop_from(m)
        toks.extend(int(t) for t in input_ids[m:n])
        for s in range(max(m - k, 0), len(toks) - k):                   # grams now followed by a token
            self._index.setdefault(tuple(toks[s : s + k]), []).append(s)

    def _find(self, next_token: int) -> list[int]:
        """The sequence is ctx (the indexed tokens, n of them) followed by next_token; its last
        n_min tokens are the key. A candidate s has ctx[s : s + n_min] == key and a token after it;
        its match extends back while ctx[s - 1 - e] == ctx[n - n_min - e]."""
        ctx, k = self._tokens, self.n_min
        n = len(ctx)
        if n < k:
            return []
        hits = self._index.get((*ctx[n - k + 1:], next_token))
        if not hits:
            return []
        best, best_len = hits[-1], -1
        for s in hits[-CANDIDATES:][::-1]:                              # the latest; the longest match wins
            e = 0
            while e < MAX_MATCH - k and s - 1 - e >= 0 and ctx[s - 1 - e] == ctx[n - k - e]:
                e += 1
            if e > best_len:
                best, best_len = s, e
        start = best + k
        return ctx[start : min(start + self.k_max, n)]

    # ---- measuring ------------------------------------------------------------------

    def settle(self, input_ids: np.ndarray, committed_end: int) -> None:
        """Records the outcomes of every pending proposal that the committed tokens
        input_ids[:committed_end] decide (their first mismatch or their end is committed)."""
        undecided = []
        for n, drafts in self._pending:
            seen = input_ids[n + 1 : min(committed_end, n + 1 + len(drafts))].tolist()
            accepted = next((i for i, (a, b) in enumerate(zip(seen, drafts)) if a != b), len(seen))
            if accepted == len(seen) < len(drafts):
                undecided.append((n, drafts))
                continue
            for i in range(min(accepted + 1, len(drafts))):
                self.alpha[i].add(float(i < accepted))
        self._pending = undecided

    def alpha_at(self, i: int) -> float:
        """Estimated P(position i + 1 accepted | earlier ones were); an unmeasured position is
        assumed as good as the one before it."""
        prior = self.prior if i == 0 else self.alpha_at(i - 1)
        return self.alpha[i].estimate(prior, prior_weight=None if i else 1.0)

    def choose(self, costs: CostTable, m: int) -> tuple[int, float]:
        """(k, tokens per second) of the best chain of k <= m drafted tokens, k = 0 (plain
        decoding) included, at the measured costs; (0, plain's rate or 0.0) while costs are unknown."""
        plain = costs.round_cost(0)
        if plain is None:
            return 0, 0.0
        u, lookup = costs.consumer, self.lookup.value or 0.0
        best_k, best = 0, 1.0 / (plain + lookup + u)
        for k in range(1, min(m, self.k_max) + 1):
            t = costs.t(k + 1)
            if t is None:
                break
            e = expected_tokens(self.alpha_at, k)
            rate = e / (t + costs.overhead(k + 1) + lookup + e * u)
            if rate > best:
                best_k, best = k, rate
        return best_k, best

    def snapshot(self) -> dict:
        return {"ngram_alpha": [round(self.alpha_at(i), 3) for i in range(self.k_max)],
                "ngram_outcomes": self.alpha[0].count, "ngram_proposals": self.proposals,
                "ngram_lookup_ms": None if self.lookup.value is None else round(1e3 * self.lookup.value, 4)}
