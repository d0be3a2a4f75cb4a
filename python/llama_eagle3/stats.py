"""Speculation counters, as returned by Llama.speculative_stats()."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class SpeculativeStats:
    rounds: int = 0              # target verify decodes that carried at least one draft token
    drafted: int = 0             # draft tokens proposed
    accepted: int = 0            # draft tokens accepted
    plain_steps: int = 0         # single-token target decodes without a draft
    uncaptured_steps: int = 0    # ... whose hidden states were not captured (no probe read them)
    fallback_steps: int = 0      # tokens decoded by the plain fallback (fallback.py): no capture, no policy
    probes: int = 0              # plain steps that checked an unverified one-token draft (policy.py)
    probe_hits: int = 0          # ... whose draft was the committed token
    accepted_at: list[int] = field(default_factory=list)  # accepted_at[i]: rounds whose draft i was accepted
    drafted_at: list[int] = field(default_factory=list)   # drafted_at[i]: rounds that drafted a token i
    proposals: int = 0           # drafter proposals (verify rounds' and probes'; n-gram copies apart)
    draft_seconds: float = 0.0   # head: catch-up decode + chain steps
    verify_seconds: float = 0.0  # target decodes of verify rounds (features included)
    sample_seconds: float = 0.0  # sampling the verify rows
    generate_seconds: float = 0.0  # wall time inside generate(), prompt included
    plain_decode_seconds: float = 0.0  # target decodes without a draft (prompts, plain steps)
    # per drafter ("eagle3", "ngram"): rounds, drafted, accepted, drafted_at, accepted_at
    drafters: dict[str, dict] = field(default_factory=dict)

    def record_round(self, n_drafted: int, n_accepted: int, depth: Optional[int] = None,
                     captured: bool = True, source: str = "eagle3") -> None:
        """A verify of n_drafted draft tokens from drafter `source` reaching `depth` positions (a
        chain: depth = n_drafted); n_drafted = 0: a plain step, its hidden states captured or not."""
        depth = n_drafted if depth is None else depth
        if n_drafted == 0:
            self.plain_steps += 1
            self.uncaptured_steps += int(not captured)
            return
        self.rounds += 1
        self.drafted += n_drafted
        self.accepted += n_accepted
        _count(self.drafted_at, self.accepted_at, depth, n_accepted)
        mine = self.drafters.setdefault(source, {"rounds": 0, "drafted": 0, "accepted": 0,
                                                 "drafted_at": [], "accepted_at": []})
        mine["rounds"] += 1
        mine["drafted"] += n_drafted
        mine["accepted"] += n_accepted
        _count(mine["drafted_at"], mine["accepted_at"], depth, n_accepted)

    def record_probe(self, hit: bool) -> None:
        self.probes += 1
        self.probe_hits += int(hit)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["mean_accepted_length"] = (self.accepted + self.rounds) / self.rounds if self.rounds else 0.0
        d["acceptance_rate"] = self.accepted / self.drafted if self.drafted else 0.0
        d["acceptance_at"] = [a / n if n else 0.0 for a, n in zip(self.accepted_at, self.drafted_at)]
        for mine in d["drafters"].values():
            mine["acceptance_at"] = [a / n if n else 0.0 for a, n in zip(mine["accepted_at"], mine["drafted_at"])]
        d["overhead_seconds"] = max(0.0, self.generate_seconds - self.draft_seconds - self.verify_seconds
                                    - self.sample_seconds - self.plain_decode_seconds)
        return d


def _count(drafted_at: list[int], accepted_at: list[int], depth: int, n_accepted: int) -> None:
    """Adds a round that drafted positions 1..depth and had the first n_accepted accepted."""
    while len(drafted_at) < depth:
        drafted_at.append(0)
        accepted_at.append(0)
    for i in range(depth):
        drafted_at[i] += 1
    for i in range(n_accepted):
        accepted_at[i] += 1
