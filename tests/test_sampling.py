"""Sampling (temperature > 0) is distributed exactly as plain sampling.

Statistical check: the first three tokens over many seeds, speculative vs plain, with a
drafter that proposes the target's own greedy continuation (so drafts are often accepted
and often rejected). A deliberately wrong acceptance rule must fail the same test."""

from __future__ import annotations

from collections import Counter

import llama_cpp
import numpy as np
import pytest
from scipy.stats import chi2_contingency

import llama_eagle3.rounds as rounds
import llama_eagle3.tree_round as tree_round
from llama_eagle3 import Llama
from llama_eagle3.tree import DraftTree

N_SEEDS = 1500
PROMPT = "the cat"
SAMPLING = dict(max_tokens=3, temperature=1.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1)


class GreedyDrafter:
    """Drafts the target's greedy continuation of the current context (cached per context)."""

    def __init__(self, inner, greedy_llm: llama_cpp.Llama):
        self.inner, self.greedy, self.cache = inner, greedy_llm, {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def propose(self, input_ids, next_token, n_max, p_min):
        n = self.inner.feature_end
        self.inner.propose(input_ids, next_token, n_max, p_min)
        ctx = tuple(int(t) for t in input_ids[:n]) + (int(next_token),)
        if (ctx, n_max) not in self.cache:
            out = []
            for t in self.greedy.generate(list(ctx), temp=0.0):
                out.append(int(t))
                if len(out) == n_max:
                    break
            self.cache[(ctx, n_max)] = out
        return list(self.cache[(ctx, n_max)])


    def propose_tree(self, input_ids, next_token, depth, width, n_nodes):
        """The target's own top-3 next tokens, each with its top-2 successors: a sampled token
        is often a non-first child, so acceptance leaves the first-child chain."""
        n = self.inner.feature_end
        self.inner.propose_tree(input_ids, next_token, depth, width, n_nodes)
        ctx = tuple(int(t) for t in input_ids[:n]) + (int(next_token),)
        tree = DraftTree([], [], [], [])
        for rank, t in enumerate(self._top(ctx, 3)):
            parent = len(tree.tokens)
            tree.tokens.append(t), tree.parents.append(-1), tree.depth.append(1), tree.scores.append(-rank)
            for rank2, t2 in enumerate(self._top(ctx + (t,), 2)):
                tree.tokens.append(t2), tree.parents.append(parent), tree.depth.append(2)
                tree.scores.append(-rank - rank2 - 1)
        return tree

    def _top(self, ctx: tuple, k: int) -> list[int]:
        if ("top", ctx) not in self.cache:
            self.greedy.reset()
            self.greedy.eval(list(ctx))
            self.cache[("top", ctx)] = [int(t) for t in np.argsort(-self.greedy.scores[self.greedy.n_tokens - 1])[:3]]
        return self.cache[("top", ctx)][:k]


def outcomes(llm) -> Counter:
    return Counter(tuple(llm(PROMPT, seed=s, **SAMPLING)["choices"][0]["text"].encode("utf-8", "replace"))
                   for s in range(N_SEEDS))


def p_value(a: Counter, b: Counter) -> float:
    keys = sorted(set(a) | set(b), key=lambda k: -(a[k] + b[k]))
    common = [k for k in keys if a[k] + b[k] >= 10]
    rows = [[a[k] for k in common] + [sum(a[k] for k in keys if k not in common)],
            [b[k] for k in common] + [sum(b[k] for k in keys if k not in common)]]
    rows = [r for r in zip(*rows) if sum(r) > 0]
    return float(chi2_contingency(np.array(rows).T)[1])


@pytest.fixture(scope="module")
def plain_counts(targets):
    plain = llama_cpp.Llama(str(targets["llama"]), n_ctx=128, verbose=False, flash_attn=True)
    return outcomes(plain)


def make_spec(targets, heads, tree: bool = False) -> Llama:
    spec = Llama(str(targets["llama"]), n_ctx=128, verbose=False, eagle3_head=str(heads["llama"]),
                 eagle3_p_min=0.0, eagle3_draft_max=2, eagle3_adaptive=False, eagle3_tree_width=3 if tree else 1,
                 eagle3_tree_nodes=9)
    # logits_all: llama-cpp-python writes `scores` only then (else they are uninitialised memory)
    greedy = llama_cpp.Llama(str(targets["llama"]), n_ctx=128, verbose=False, flash_attn=True, logits_all=True)
    spec._engine.drafter = GreedyDrafter(spec._engine.drafter, greedy)
    return spec


@pytest.mark.parametrize("tree", [False, True], ids=["chain", "tree"])
def test_sampling_matches_plain_distribution(plain_counts, targets, heads, tree):
    spec = make_spec(targets, heads, tree)
    counts = outcomes(spec)
    stats = spec.speculative_stats()
    assert 0 < stats["accepted"] < stats["drafted"]  # both branches of the rule were exercised
    assert len(plain_counts) > 20  # a real distribution, not a near-deterministic one
    assert p_value(plain_counts, counts) > 1e-3
    # stronger: every committed token is one draw of the same sampler chain, in the same order
    # and from the same logits, so each seed reproduces plain sampling exactly
    assert counts == plain_counts


def test_wrong_rule_is_detected(plain_counts, targets, heads, monkeypatch):
    def biased(sample_row, drafts):  # commits drafts it should have checked: not lossless
        out = []
        for i in range(len(drafts) + 1):
            y = sample_row(i)
            if i < len(drafts) and (y == drafts[i] or i == 0):
                out.append(drafts[i])
                continue
            out.append(y)
            break
        return out

    monkeypatch.setattr(rounds, "accept_chain", biased)
    counts = outcomes(make_spec(targets, heads))
    assert p_value(plain_counts, counts) < 1e-6


def test_wrong_tree_rule_is_detected(plain_counts, targets, heads, monkeypatch):
    real = tree_round.accept_tree

    def first_child(sample_row, tree):  # commits the most likely draft at the root unchecked: not lossless
        committed, path = real(sample_row, tree)
        if path[:1] == [0]:
            return committed, path
        return [tree.tokens[0], sample_row(1)], [0]

    monkeypatch.setattr(tree_round, "accept_tree", first_child)
    counts = outcomes(make_spec(targets, heads, tree=True))
    assert p_value(plain_counts, counts) < 1e-6


def _no_e(input_ids, scores):
    scores = scores.copy()
    scores[ord("e")] = -float("inf")  # a logits processor that bans a byte token
    return scores


SAMPLERS = {
    "mirostat v2": dict(mirostat_mode=2, mirostat_tau=4.0, mirostat_eta=0.2),
    "penalties": dict(repeat_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.3),
    "grammar": dict(grammar='root ::= ("the" | " cat" | " is" | " a" | " hat")+'),
    "logits processor": dict(logits_processor=[_no_e]),
}


@pytest.mark.parametrize("tree", [False, True], ids=["chain", "tree"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_reproduces_plain_per_seed(name, tree, targets, heads):
    from llama_cpp import LogitsProcessorList
    from llama_cpp.llama_grammar import LlamaGrammar

    def kwargs() -> dict:
        kw = dict(SAMPLERS[name])
        if "grammar" in kw:
            kw["grammar"] = LlamaGrammar.from_string(kw["grammar"], verbose=False)
        if "logits_processor" in kw:
            kw["logits_processor"] = LogitsProcessorList(kw["logits_processor"])
        return kw

    plain = llama_cpp.Llama(str(targets["llama"]), n_ctx=128, verbose=False, flash_attn=True)
    spec = make_spec(targets, heads, tree)
    for seed in range(40):
        a = plain(PROMPT, seed=seed, max_tokens=12, temperature=0.9, **kwargs())["choices"][0]["text"]
        b = spec(PROMPT, seed=seed, max_tokens=12, temperature=0.9, **kwargs())["choices"][0]["text"]
        assert b == a, (name, seed)
    stats = spec.speculative_stats()
    assert stats["rounds"] > 0
    if name != "grammar":  # the drafter ignores the grammar, so the grammar rejects its drafts
        assert stats["accepted"] > 0
