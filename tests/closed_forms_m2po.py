"""M2PO's two forms written token by token in float64 for test_gradient_identity.py: the
paper's masked unclipped ratio (Zheng et al. 2025: mask the largest (log π_θ − log π_behaviour)²
until the mean of the rest is below τ, (1/Σ|o_i|) Σ M·ρ·Â) and the released code's budgeted
PPO clip (Infini-AI-Lab/M2PO ``kpo_clip_harmful_tokens`` + ``compute_m2po_policy_loss``)."""

from __future__ import annotations

import math

import torch
from batches import DTYPE, rl_batch
from closed_forms_frontier import advantages
from torch import Tensor

from alignlib.estimator import Batch


def stale_batch(seed: int = 0) -> Batch:
    """rl_batch with π_old 0.3 from π per token and engine log-probs a further 0.3 from π_old:
    mean squared log-ratios near 0.1–0.2, well above the budget 0.04."""
    b = rl_batch(seed=seed, spread=0.3)
    gen = torch.Generator().manual_seed(700 + seed)
    noise = 0.3 * torch.randn(b.logprobs.shape, generator=gen, dtype=DTYPE)
    return b.replace(behaviour_logprobs=b.old_logprobs + noise)


def tokens(b: Batch) -> list[tuple[int, int]]:
    return [(i, t) for i in range(b.num_rows) for t in range(b.mask.shape[1]) if b.mask[i, t]]


def paper_kept(b: Batch, tau: float) -> set[tuple[int, int]]:
    """Drop the token of largest (log π − log π_behaviour)² (lower flat index first among
    equals) while the mean over those left is at least τ, always leaving one."""
    left = sorted(
        tokens(b),
        key=lambda it: (
            -float((b.logprobs[it] - b.behaviour_logprobs[it]).detach() ** 2),
            it[0] * b.mask.shape[1] + it[1],
        ),
    )
    squares = {it: float((b.logprobs[it] - b.behaviour_logprobs[it]).detach() ** 2) for it in left}
    while len(left) > 1 and sum(squares[it] for it in left) / len(left) >= tau:
        left.pop(0)
    return set(left)


def closed_m2po_paper(b: Batch, tau: float = 0.04) -> Tensor:
    adv = advantages(b).tolist()
    kept = paper_kept(b, tau)
    total = torch.zeros((), dtype=torch.float64)
    for i, t in tokens(b):
        if (i, t) in kept:
            total = total - torch.exp(b.logprobs[i, t] - b.old_logprobs[i, t]) * adv[i]
    return total / len(tokens(b))


def released_tau(b: Batch, budget: float) -> float:
    """The released rule by loops: the harmful tokens' Δ² = (log π_old − log π)², ascending;
    no clip (∞) when their mean is within the budget; else the first k whose cap at Δ²_k
    reaches budget·n gives τ = √Δ²_{k−1} (0 when k = 0)."""
    adv = advantages(b).tolist()
    squares = []
    for i, t in tokens(b):
        ratio = math.exp(float(b.logprobs[i, t] - b.old_logprobs[i, t]))
        if (adv[i] > 1e-12 and ratio > 1 + 1e-12) or (adv[i] < -1e-12 and ratio < 1 - 1e-12):
            squares.append(float(b.old_logprobs[i, t] - b.logprobs[i, t]) ** 2)
    n = len(squares)
    if n == 0 or sum(squares) / n <= budget:
        return math.inf
    squares.sort()
    for k in range(n):
        if squares[k] * (n - k - 1) + sum(squares[: k + 1]) >= budget * n:
            return 0.0 if k == 0 else math.sqrt(squares[k - 1])
    return math.inf


def closed_m2po_released(
    b: Batch, budget: float = 0.04, floors: tuple[float, float] | None = None
) -> Tensor:
    tau = released_tau(b, budget)
    eps_low, eps_high = 1 - math.exp(-tau), math.expm1(tau)
    if floors is not None:
        eps_low, eps_high = max(eps_low, floors[0]), max(eps_high, floors[1])
    adv = advantages(b).tolist()
    total = torch.zeros((), dtype=torch.float64)
    for i, t in tokens(b):
        ratio = torch.exp(b.logprobs[i, t] - b.old_logprobs[i, t])
        clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
        total = total + torch.maximum(-adv[i] * ratio, -adv[i] * clipped)
    return total / len(tokens(b))


CASES = {
    "m2po": (stale_batch, closed_m2po_paper, {}),
    "m2po_released": (stale_batch, closed_m2po_released, {"form": "released"}),
    "m2po_released_floors": (
        stale_batch,
        lambda b: closed_m2po_released(b, budget=0.02, floors=(0.3, 0.5)),
        {"form": "released", "threshold": 0.02, "min_eps_low": 0.3, "min_eps_high": 0.5},
    ),
}
VARIANTS = {"m2po_released": "m2po", "m2po_released_floors": "m2po"}
