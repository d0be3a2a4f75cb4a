"""n-gram drafts (ngram.py): the context's own repeats, measured for free, priced like any draft,
and lossless through the shared verifier."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest

from llama_eagle3 import Llama
from llama_eagle3.costs import CostTable
from llama_eagle3.ngram import NgramDrafter


def ids(*tokens: int) -> np.ndarray:
    return np.array([*tokens, 0, 0, 0, 0, 0, 0], dtype=np.int32)  # room past the context, as input_ids has


def test_the_latest_longest_match_is_copied():
    d = NgramDrafter(k_max=4, n_min=3)
    #          0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15
    context = [9, 1, 2, 3, 7, 7, 5, 1, 2, 3, 8, 8, 9, 1, 2]
    # key [1, 2, 3] (3 pending): occurrences at 1 (preceded by 9, as now) and 7 (preceded by 5):
    # the longer match wins over the later one
    assert d.propose(ids(*context), len(context), 3) == [7, 7, 5, 1]
    assert d.propose(ids(4, 4, 4), 3, 4) == []          # no earlier occurrence: nothing drafted
    assert d.propose(ids(1, 2), 2, 3) == []              # shorter than n_min


def test_every_proposal_is_settled_against_what_was_committed():
    d = NgramDrafter(k_max=4, n_min=3)
    seq = [1, 2, 3, 4, 5, 6, 7, 9, 9, 1, 2, 3, 4, 5, 0, 0, 0]
    a = np.array(seq, dtype=np.int32)
    assert d.propose(a, 11, 3) == [4, 5, 6, 7]           # t_11 = 3: drafts positions 12..15
    assert d.propose(a, 12, 4) == [5, 6, 7, 9]           # not decided yet: both pending
    d.settle(a, 15)                                      # committed 12..14 = 4, 5, 0
    assert [x.count for x in d.alpha] == [2, 2, 1, 0]    # 2 accepted + 1 rejected; 1 + 1
    assert d.alpha[0].estimate(0.5) > 0.5 > d.alpha[2].estimate(0.5)


def test_an_ngram_chain_is_verified_only_where_its_acceptance_pays():
    costs = CostTable()
    for n, ms in {1: 7.8, 2: 20.6, 3: 25.0, 4: 31.0, 5: 30.5}.items():  # this project's CPU, SmolLM2
        for _ in range(3):
            costs.add(n, ms * 1e-3)
    d = NgramDrafter(k_max=4)
    for _ in range(30):
        for i in range(4):
            d.alpha[i].add(1.0)
    k, rate = d.choose(costs, 4)
    assert k == 4 and rate > 1 / 7.8e-3                  # always right: 5 tokens for 30.5 ms
    assert d.choose(costs, 1)[0] == 0                    # one token for 20.6 ms loses to plain
    for _ in range(30):
        d.alpha[0].add(0.0)
        d.alpha[0].add(1.0)                              # right half the time: never pays here
    assert d.choose(costs, 4)[0] == 0


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_copies_are_verified_losslessly(targets, heads, temperature):
    """On text that repeats (the tiny target loops), n-gram rounds run, and every completion is
    plain llama-cpp-python's (greedy; sampled, seed for seed)."""
    plain = llama_cpp.Llama(str(targets["llama"]), n_ctx=512, verbose=False, flash_attn=True)
    spec = Llama(str(targets["llama"]), n_ctx=512, verbose=False, eagle3_head=str(heads["llama"]))
    for n in range(1, 6):  # bandwidth-bound costs (not this machine's timings): copies pay where text repeats
        spec._policy.costs.replace(n, [6.0e-3 + 0.1e-3 * n])
    spec._policy.observe_decode = lambda n, seconds, provisional=False: None
    spec._policy.observe_overhead = lambda rows, seconds: None
    for p in ["the cat sat", "in the beginning", "once more we", "a b c a b c a b"]:
        want = plain(p, max_tokens=120, temperature=temperature, seed=3)["choices"][0]["text"]
        assert spec(p, max_tokens=120, temperature=temperature, seed=3)["choices"][0]["text"] == want
    s = spec.speculative_stats()
    assert s["policy"]["ngram_proposals"] > 0 and s["policy"]["ngram_outcomes"] > 0
    if temperature == 0.0:
        assert s["drafters"]["ngram"]["rounds"] > 0, s


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_ngram_alone_without_a_head(targets, temperature):
    """eagle3_head="ngram": no head, no capture; llama-cpp-python's own loop with n-gram copies
    verified where they pay; output is plain's (greedy; sampled, seed for seed)."""
    plain = llama_cpp.Llama(str(targets["llama"]), n_ctx=512, verbose=False, flash_attn=True)
    spec = Llama(str(targets["llama"]), n_ctx=512, verbose=False, eagle3_head="ngram")
    assert spec.is_speculative and spec._engine.fallback.active
    assert spec._policy.costs.rows() == [1, 2, 3, 4, 5]  # every verify shape calibrated
    # bandwidth-bound costs (not this machine's timings): copies pay wherever the text repeats
    for n in range(1, 6):
        spec._policy.costs.replace(n, [6.0e-3 + 0.1e-3 * n])
    spec._policy.observe_decode = lambda n, seconds, provisional=False: None
    spec._policy.observe_overhead = lambda rows, seconds: None
    for p in ["the cat sat", "a b c a b c a b", "once more we"]:
        want = plain(p, max_tokens=120, temperature=temperature, seed=3)["choices"][0]["text"]
        assert spec(p, max_tokens=120, temperature=temperature, seed=3)["choices"][0]["text"] == want
    s = spec.speculative_stats()
    assert set(s["drafters"]) == {"ngram"} and s["policy"]["ngram_proposals"] > 0, s
    assert s["drafters"]["ngram"]["rounds"] > 0 and s["fallback_steps"] > 0, s
    with pytest.raises(ValueError, match="eagle3_draft_max >= 1"):
        Llama(str(targets["llama"]), n_ctx=512, verbose=False, eagle3_head="ngram", eagle3_draft_max=0)
