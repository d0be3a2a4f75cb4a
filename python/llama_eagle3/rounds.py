"""One round of the engine: choose what to draft, verify it in one target decode, commit.

    pending  = tokens to evaluate, [t_n] in steady state (t_n: the last sampled token at n)
    drafts   = the head's chain, an n-gram copy, or nothing     d_1..d_K, K may be 0
    decode   [t_n, d_1..d_K] at positions n..n+K                ONE target decode, logits on every row
    commit   accept_chain(sample row i, drafts)                 y_0..y_a, a drafts accepted
    rollback the target KV to n+a+1; the features of n..n+a go to the head's drafter

Which drafter drafts: the head's chain of the length the policy chose (policy.decide), unless an
n-gram copy of the context (ngram.py) is predicted faster, both priced on the same measured
costs (costs.py). A tree round (tree_round.py) when the policy picks a tree.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

from .tree_round import tree_round
from .verifier import accept_chain

if TYPE_CHECKING:
    from .engine import Engine

# the head context a probe decodes: kept while speculation is off (drafter.forget) and captured
# only by the plain steps this close to the next probe (the others: drafter.skip)
OFF_WINDOW = 16


def chain_round(engine: "Engine", pending: list[int]) -> tuple[list[int], int]:
    """One target decode of pending (+ a draft); returns the committed tokens and the position
    whose logits produced the first of them. On return the target KV holds every committed
    token but the last."""
    llm, stats, policy, drafter = engine.llm, engine.stats, engine.policy, engine.drafter
    t_round = time.perf_counter()
    if drafter.feature_end < llm.n_tokens:  # tokens a tree round committed past a branch
        pending = engine.resync() + pending
    n0 = llm.n_tokens
    drafts: list[int] = []
    probe: list[int] = []  # an unverified one-token draft while the policy has speculation off
    draft_seconds = 0.0
    source = getattr(drafter, "name", "eagle3")  # the head's drafter: "eagle3" or "dflash"
    capture = engine.draft_max > 0  # False: nothing reads this decode's features (OFF_WINDOW)
    if len(pending) == 1 and engine.draft_max > 0 and drafter.feature_end == n0 and n0 > 0:
        room = engine.ctx_limit - n0 - 1  # the verify batch must fit in the context
        tree, k = policy.decide()
        if tree and room >= engine.draft_max and drafter.n_pending > 0:  # (none after a skip)
            return tree_round(engine, pending[0], t_round)
        k = min(k, room)
        copy = ngram_drafts(engine, pending[0], room, k)
        if copy:
            drafts, source, k = copy, "ngram", 0
        elif k > 0 or (room > 0 and policy.probe_due()):
            # a round after plain steps first decodes up to 2 * OFF_WINDOW pending pairs: that
            # catch-up is not a step cost (nor is a probe's, which is mostly catch-up)
            steady = drafter.n_pending <= engine.draft_max + 1
            t0 = time.perf_counter()
            proposed = drafter.propose(llm.input_ids, pending[0], max(k, 1), engine.p_min)
            draft_seconds = time.perf_counter() - t0
            stats.draft_seconds += draft_seconds
            stats.proposals += 1
            if k > 0 and steady:
                policy.observe_draft(len(proposed), draft_seconds, asked=k)
            drafts, probe = (proposed, []) if k > 0 else ([], proposed)
        if k == 0 and policy.adaptive and not tree and not probe:
            capture = policy.plain_steps_to_probe() < OFF_WINDOW
    committed, first_pos, decode_seconds = verify_chain(engine, pending, drafts, capture, source)
    n_accepted = len(committed) - 1
    if drafts and source != "ngram":
        policy.observe_round(len(drafts), n_accepted)
    elif not drafts and len(pending) == 1:
        stats.record_round(0, 0, captured=capture)
        if probe:
            hit = probe[0] == committed[0] if engine.simulated is None else engine.simulated.probe_hit()
            stats.record_probe(hit)
            policy.observe_probe(hit, draft_seconds)
        if policy.adaptive:
            drafter.forget(OFF_WINDOW)
    if len(pending) == 1:
        t_end = time.perf_counter()
        policy.observe_overhead(len(drafts) + 1, t_end - t_round - decode_seconds - draft_seconds)
        if policy.adaptive and (source != "ngram" and drafts or probe):
            if drafts:
                engine.fallback.realized.add(len(committed), t_end - t_round)
            engine.fallback.consider(policy)
    return committed, first_pos


def ngram_drafts(engine: "Engine", next_token: int, room: int, k_head: int) -> list[int]:
    """The n-gram copy to verify this round: the chain of drafted tokens the measured costs and
    the n-gram acceptance rate fastest, if it beats the head's chain of k_head (0: plain
    decoding); [] otherwise, without an n-gram drafter, or with a fixed policy (eagle3_adaptive=False
    drafts the head's chain every round)."""
    if engine.ngram is None or room <= 0 or not engine.policy.adaptive:
        return []
    candidate = engine.ngram.propose(engine.llm.input_ids, engine.llm.n_tokens, next_token)
    if not candidate:
        return []
    k, rate = engine.ngram.choose(engine.policy.costs, min(len(candidate), room))
    return candidate[:k] if k > 0 and rate > (engine.policy.expected_rate(k_head) or 0.0) else []


def ngram_round(engine: "Engine", pending: list[int], capture: bool) -> Optional[tuple[list[int], int]]:
    """Inside the plain fallback: a round verifying an n-gram copy when one is predicted faster
    than plain decoding (the head is not consulted), else None. The head's drafter is brought in
    step first (the fallback's plain steps were not shown to it)."""
    llm = engine.llm
    room = engine.ctx_limit - llm.n_tokens - 1
    if llm.n_tokens == 0:
        return None
    drafts = ngram_drafts(engine, pending[0], room, 0)
    if not drafts:
        return None
    engine.sync_drafter()
    t0 = time.perf_counter()
    committed, first_pos, decode_seconds = verify_chain(engine, pending, drafts, capture, "ngram")
    engine.policy.observe_overhead(len(drafts) + 1, time.perf_counter() - t0 - decode_seconds)
    return committed, first_pos


def verify_chain(engine: "Engine", pending: list[int], drafts: list[int], capture: bool,
                 source: str) -> tuple[list[int], int, float]:
    """Decodes pending + drafts, samples the verify rows and rolls the KV back to the accepted
    prefix. Returns the committed tokens, the position whose logits produced the first, and the
    decode's seconds."""
    llm, stats, policy = engine.llm, engine.stats, engine.policy
    n0 = llm.n_tokens
    batch = pending + drafts
    t0 = time.perf_counter()
    engine.decode(batch, len(drafts) + 1, capture)
    t1 = time.perf_counter()
    if drafts:
        stats.verify_seconds += t1 - t0
    else:
        stats.plain_decode_seconds += t1 - t0
    if len(pending) == 1:
        policy.observe_decode(len(batch), t1 - t0)
    first_pos = n0 + len(pending) - 1
    committed = commit(engine, drafts, first_pos)
    stats.sample_seconds += time.perf_counter() - t1
    llm.n_tokens = n0 + len(batch)
    if drafts:
        stats.record_round(len(drafts), len(committed) - 1, source=source)
        engine.truncate(first_pos + len(committed))
    return committed, first_pos, t1 - t0


def commit(engine: "Engine", drafts: list[int], first_pos: int) -> list[int]:
    """Samples the verify rows of the latest decode (row 0 at first_pos) and returns the
    committed tokens (accept_chain, or the benchmark's simulated acceptance)."""
    llm, n_rows = engine.llm, len(drafts) + 1

    def sample_row(i: int) -> int:
        llm.n_tokens = first_pos + i + 1  # logits processors see the prefix of this row
        return llm._sampler.sample(llm._ctx, i - n_rows)

    simulated = engine.simulated
    accept = accept_chain if simulated is None or not drafts else simulated.accept_chain
    return accept(sample_row, drafts)
