"""DPPO's closed form (Qi et al. 2026; the authors' ``core_algos.py``), written token by token in
float64 for test_gradient_identity.py, and a batch whose sampling engine's log-probs differ from
π_old (one unscored by the engine: NaN) so that the TV and KL masks act in both directions."""

from __future__ import annotations

import math

import torch
from batches import rl_batch
from closed_forms_frontier import advantages
from torch import Tensor

from alignlib.estimator import Batch


def old_batch(seed: int = 0) -> Batch:
    """rl_batch with π_old a distribution's log-probs (≤ 0: the binary KL needs q ≤ 1)."""
    b = rl_batch(seed=seed, spread=0.6)
    return b.replace(old_logprobs=b.old_logprobs.clamp(max=-1e-3))


def engine_batch(seed: int = 0) -> Batch:
    b = old_batch(seed)
    gen = torch.Generator().manual_seed(300 + seed)
    engine = b.old_logprobs + 0.3 * torch.randn(b.mask.shape, generator=gen, dtype=torch.float64)
    engine[2, 3] = math.nan  # a token the engine did not score: π_old stands in
    return b.replace(behaviour_logprobs=engine.clamp(max=-1e-3))


def masked(lp: float, anchor: float, adv: float, kind: str, low: float, high: float) -> bool:
    """The authors' rule for one token: the move p − q (TV) or the binary KL, against Â's push."""
    p, q = math.exp(lp), math.exp(anchor)
    if kind == "tv":
        return p - q > high if adv > 0 else p - q < -low
    kl = q * math.log(q / p) + (1 - q) * math.log((1 - q + 1e-8) / (1 - p + 1e-8))
    return (kl > high and p > q) if adv > 0 else (kl > low and p < q)


def closed_dppo(
    b: Batch,
    kind: str = "tv",
    low: float = 0.2,
    high: float = 0.2,
    anchor: str = "sampling",
    cap: float | None = 10.0,
    std: bool = True,
    tau: float = 0.0,
) -> Tensor:
    """Token-mean of −sg[min(ρ, c)]·M·Â·log π (+ τ·(log π − log π_old)²), ρ = π/μ."""
    adv = advantages(b, std).tolist()
    lp = b.logprobs.detach()
    total = torch.zeros((), dtype=torch.float64)
    for i, t in b.mask.nonzero().tolist():
        old = float(b.old_logprobs[i, t])
        engine = float(b.behaviour_logprobs[i, t]) if b.behaviour_logprobs is not None else old
        mu = old if math.isnan(engine) else engine
        here = float(lp[i, t])
        if not masked(here, mu if anchor == "sampling" else old, adv[i], kind, low, high):
            ratio = math.exp(min(here - mu, 20.0))
            weight = ratio if cap is None else min(ratio, cap)
            total = total - weight * adv[i] * b.logprobs[i, t]
        total = total + tau * (b.logprobs[i, t] - old) ** 2
    return total / b.mask.sum()


CASES = {
    "dppo": (engine_batch, closed_dppo, {}),
    "dppo_kl": (
        engine_batch,
        lambda b: closed_dppo(b, "kl", low=0.02, high=0.03),
        {"divergence": "kl", "delta_low": 0.02, "delta_high": 0.03},
    ),
    "dppo_recompute": (
        engine_batch,
        lambda b: closed_dppo(b, low=0.1, high=0.15, anchor="old"),
        {"anchor": "old", "delta_low": 0.1, "delta_high": 0.15},
    ),
    "dppo_prime_rl": (
        engine_batch,
        lambda b: closed_dppo(b, cap=None, std=False, tau=1e-3),
        {"ratio_cap": None, "std": False, "kl_tau": 1e-3},
    ),
    "dppo_without_engine": (
        old_batch,
        lambda b: closed_dppo(b, cap=1.5),
        {"ratio_cap": 1.5},
    ),
}
VARIANTS = {name: "dppo" for name in CASES if name != "dppo"}
