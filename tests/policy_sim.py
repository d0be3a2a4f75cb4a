"""The draft policy against the best fixed chain length, on modelled costs (no engine, no
timing): each round the policy chooses k, draft position i is accepted with probability alpha
(given the ones before it were), and the round costs T(k + 1) + k c from a cost table; probes
cost c. `python tests/policy_sim.py` prints the table in docs/adaptive.md."""

from __future__ import annotations

import random
from typing import Optional

from llama_eagle3.policy import DraftPolicy

# T(n) in seconds for n = 1..5 rows, and the head's step c
COSTS = {
    # SmolLM2-135M Q8_0 on this project's 2-core CPU (simulated bench, 2026-11-29)
    "smollm2-cpu": ({1: 12.5e-3, 2: 18.0e-3, 3: 23.5e-3, 4: 29.0e-3, 5: 36.0e-3}, 1.4e-3),
    # the llama-8b synthetic shape, Q4_K_M, same CPU (2026-11-29; T(3), T(4) interpolated)
    "llama8b-cpu": ({1: 117e-3, 2: 198e-3, 3: 260e-3, 4: 322e-3, 5: 384e-3}, 13.3e-3),
    # the same shape and quantization on the same CPU on 2026-11-30 (memory slower that day): llama.cpp's
    # repacked Q4_K kernels take rows in blocks of 4, so T(4) < T(2)
    "llama8b-cpu-rows-of-4": ({1: 315e-3, 2: 505e-3, 3: 640e-3, 4: 465e-3, 5: 658e-3}, 26.5e-3),
    # bandwidth-bound: more rows nearly free
    "gpu-like": ({1: 6.0e-3, 2: 6.1e-3, 3: 6.2e-3, 4: 6.3e-3, 5: 6.4e-3}, 0.3e-3),
}
ALPHAS = (0.5, 0.7, 0.8, 0.9, 0.95)


def rate(costs: dict[int, float], c: float, alpha: float, tokens: int, seed: int,
         policy: Optional[DraftPolicy] = None, fixed: int = 0, noise: float = 0.0) -> float:
    """Tokens per modelled second until `tokens` are committed, by the policy (adaptive) or by a
    fixed chain length; noise: each decode takes its cost times a log-normal factor of this
    sigma (this project's VM: about 0.15)."""
    rng = random.Random(seed)
    n, t = 0, 0.0
    while n < tokens:
        k = policy.decide()[1] if policy is not None else fixed
        accepted = next((i for i in range(k) if rng.random() >= alpha), k)
        decode = costs[k + 1] * (rng.lognormvariate(0.0, noise) if noise else 1.0)
        n, t = n + accepted + 1, t + decode + k * c
        if policy is None:
            continue
        policy.observe_decode(k + 1, decode)
        if k:
            policy.observe_draft(k, k * c)
            policy.observe_round(k, accepted)
        elif policy.probe_due():
            policy.observe_probe(rng.random() < alpha, c)
            t += c
    return n / t


def calibrated(costs: dict[int, float], c: float) -> DraftPolicy:
    """An adaptive policy after the engine's start-up calibration (rows 1-5 and the head step)
    measured these costs."""
    p = DraftPolicy(4)
    for rows in range(1, 6):
        for _ in range(3):
            p.observe_calibration(rows, costs[rows])
    for _ in range(3):
        p.observe_calibration_step(c)
    return p


def efficiency(name: str, alpha: float, tokens: int = 20000, seed: int = 0, noise: float = 0.0,
               calibration: Optional[tuple[dict[int, float], float]] = None) -> tuple[float, int]:
    """(the policy's rate over the best fixed length's, that best length); calibration: what
    start-up measured, if not the true costs."""
    costs, c = COSTS[name]
    fixed = [rate(costs, c, alpha, tokens, seed, fixed=k, noise=noise) for k in range(5)]
    best = max(range(5), key=lambda k: fixed[k])
    policy = calibrated(*(calibration or (costs, c)))
    return rate(costs, c, alpha, tokens, seed, policy=policy, noise=noise) / fixed[best], best


if __name__ == "__main__":
    print("| costs | decode-time noise | " + " | ".join(f"alpha {a}" for a in ALPHAS) + " |")
    print("|---" * (len(ALPHAS) + 2) + "|")
    for name in COSTS:
        for noise in (0.0, 0.15):
            cells = [efficiency(name, a, noise=noise) for a in ALPHAS]
            print(f"| {name} | {noise} | " + " | ".join(f"{e:.3f} (best: {'plain' if k == 0 else f'chain-{k}'})"
                                                      for e, k in cells) + " |")
