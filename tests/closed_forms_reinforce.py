"""REINFORCE with a baseline, written row by row and token by token in float64 for
test_gradient_identity.py: TOPR's closed form (Le Roux et al. 2025, eq. 8; ROLL's and
Trinity-RFT's token-ratio code) on rows with rewards ±1 (the paper's) whose π_old differs from π
in both directions, and ReMax's (Li et al. 2024, Algorithm 1) with a greedy reward per group."""

from __future__ import annotations

import math

import torch
from batches import rl_batch
from closed_forms_frontier import advantages
from torch import Tensor

from alignlib.estimator import Batch


def signed_batch(seed: int = 0) -> Batch:
    """rl_batch with rewards −1/+1 and π_old far enough from π that sequence ratios fall on
    both sides of 1."""
    b = rl_batch(seed=seed, spread=0.5)
    return b.replace(rewards=2 * b.rewards - 1)


def closed_topr(
    b: Batch,
    baseline: float = 0.0,
    level: str = "sequence",
    weights: tuple[float, float] = (1.0, 1.0),
    adv: list[float] | None = None,
    per: str = "sequence",
) -> Tensor:
    """Σ over rows of −α_i,t · Â_i · Σ_t ℓ_t, α = w₊ for Â ≥ 0 and w₋·min(1, π/π_old) for Â < 0
    (π/π_old the product over the row, or the token's own), divided by the row count
    (``per="sequence"``) or the token count (``per="token"``)."""
    lp, old, m = b.logprobs.detach(), b.old_logprobs, b.mask
    adv = adv if adv is not None else [r - baseline for r in b.rewards.tolist()]
    total = torch.zeros((), dtype=torch.float64)
    for i in range(b.num_rows):
        valid = [t for t in range(m.shape[1]) if m[i, t] == 1]
        sequence_log_ratio = sum(float(lp[i, t] - old[i, t]) for t in valid)
        for t in valid:
            log_ratio = sequence_log_ratio if level == "sequence" else float(lp[i, t] - old[i, t])
            alpha = weights[0] if adv[i] >= 0 else weights[1] * min(1.0, math.exp(log_ratio))
            total = total - alpha * adv[i] * b.logprobs[i, t]
    return total / (b.num_rows if per == "sequence" else m.sum())


def greedy_batch(seed: int = 0) -> Batch:
    """rl_batch with each group's greedy completion's reward: 0 or 1, one group's equal to
    all of its rows' (Â = 0 there)."""
    b = rl_batch(seed=seed, spread=0.5)
    gen = torch.Generator().manual_seed(500 + seed)
    per_group = torch.randint(0, 2, (int(b.group_ids.max()) + 1,), generator=gen)
    per_group[0] = 1  # group 0's rows are all right (rl_batch): no signal
    return b.replace(baseline_rewards=per_group[b.group_ids].to(torch.float64))


def closed_remax(b: Batch, clip: float | None = None) -> Tensor:
    """Paper: mean over rows of −Σ_t (R_i − R̄_i)·ℓ_t. ``clip``: verl's actor instead, the
    token mean of −min(ρÂ, clip(ρ, 1 ± ε)Â)."""
    m = b.mask
    total = torch.zeros((), dtype=torch.float64)
    for i in range(b.num_rows):
        adv = float(b.rewards[i] - b.baseline_rewards[i])
        for t in range(m.shape[1]):
            if m[i, t] == 0:
                continue
            if clip is None:
                total = total - adv * b.logprobs[i, t]
            else:
                ratio = torch.exp(b.logprobs[i, t] - b.old_logprobs[i, t])
                total = total + torch.maximum(-ratio * adv, -ratio.clamp(1 - clip, 1 + clip) * adv)
    return total / (b.num_rows if clip is None else m.sum())


CASES = {
    "remax": (greedy_batch, closed_remax, {}),
    "remax_verl": (
        greedy_batch,
        lambda b: closed_remax(b, clip=0.2),
        {"clip": 0.2, "aggregation": "token-mean"},
    ),
    "topr": (signed_batch, closed_topr, {}),
    "topr_baseline": (
        rl_batch,
        lambda b: closed_topr(b, baseline=0.4),
        {"baseline": 0.4},
    ),
    "topr_roll": (
        signed_batch,
        lambda b: closed_topr(
            b, level="token", weights=(0.5, 2.0), adv=advantages(b).tolist(), per="token"
        ),
        {
            "level": "token",
            "advantage": "grpo",
            "positive_weight": 0.5,
            "negative_weight": 2.0,
            "aggregation": "token-mean",
        },
    ),
}
VARIANTS = {"topr_baseline": "topr", "topr_roll": "topr", "remax_verl": "remax"}
