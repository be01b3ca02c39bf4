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


def energy_batch(seed: int = 0, steps: bool = False) -> Batch:
    """rl_batch with log Σπ_old² (between log π_old² and 0, as a distribution's), a group of
    one row, and (``steps``) step rewards on two tokens of some rows, part of their reward."""
    b = rl_batch(seed=seed, spread=0.4)
    gen = torch.Generator().manual_seed(700 + seed)
    floor = 2 * b.old_logprobs
    squares = floor + torch.rand(b.mask.shape, generator=gen, dtype=torch.float64) * -floor
    group_ids = b.group_ids.clone()
    group_ids[-1] = 99
    b = b.replace(old_log_sum_sq_probs=squares, group_ids=group_ids)
    if not steps:
        return b
    placed = torch.zeros_like(b.mask)
    for i in range(0, b.num_rows, 3):
        valid = b.mask[i].nonzero().flatten().tolist()
        placed[i, valid[0]] = 0.3
        placed[i, valid[-1]] += -0.2
    return b.replace(step_rewards=placed, rewards=b.rewards + placed.sum(-1))


def otb_advantages(b: Batch, zero_tail: bool = True) -> Tensor:
    """verl's compute_optimal_token_baseline_advantage, by loops over groups, rows and each
    row's k-th token: W_k = Σ_{j≤k} (1 − 2π_j + Σπ²_j), G_k = R less the step rewards before
    k, B_k = Σ G·W / (Σ W + 1e-8) over the group's rows of length > k."""
    adv = torch.zeros_like(b.mask)
    tokens = [b.mask[i].nonzero().flatten().tolist() for i in range(b.num_rows)]
    steps = b.step_rewards if b.step_rewards is not None else torch.zeros_like(b.mask)
    w, g = {}, {}
    for i, positions in enumerate(tokens):
        total, before = 0.0, 0.0
        for k, t in enumerate(positions):
            total += 1 - 2 * math.exp(b.old_logprobs[i, t]) + math.exp(b.old_log_sum_sq_probs[i, t])
            w[i, k], g[i, k] = total, float(b.rewards[i]) - before
            before += float(steps[i, t])
    for gid in sorted(set(b.group_ids.tolist())):
        members = [i for i in range(b.num_rows) if b.group_ids[i] == gid]
        lengths = sorted(len(tokens[i]) for i in members)
        for i in members:
            tail = len(tokens[i])
            unique_top = len(members) > 1 and lengths[-1] > lengths[-2]
            if zero_tail and unique_top and len(tokens[i]) == lengths[-1]:
                tail = lengths[-2]
            for k, t in enumerate(tokens[i]):
                base = 0.0
                if len(members) > 1 and k < tail:
                    reach = [j for j in members if len(tokens[j]) > k]
                    num = sum(g[j, k] * w[j, k] for j in reach)
                    base = num / (sum(w[j, k] for j in reach) + 1e-8)
                adv[i, t] = g[i, k] - base
    return adv


def closed_otb(b: Batch, zero_tail: bool = True) -> Tensor:
    """Token mean of PPO's clipped −min(ρÂ, clip(ρ, 0.8, 1.2)Â) with OTB's per-token Â."""
    a = otb_advantages(b, zero_tail)
    ratio = torch.exp(b.logprobs - b.old_logprobs)
    loss = torch.maximum(-ratio * a, -ratio.clamp(0.8, 1.2) * a)
    return (loss * b.mask).sum() / b.mask.sum()


CASES |= {
    "otb": (energy_batch, closed_otb, {}),
    "otb_whole_tail": (energy_batch, lambda b: closed_otb(b, False), {"zero_tail": False}),
    "otb_steps": (lambda seed=0: energy_batch(seed, steps=True), closed_otb, {}),
}
VARIANTS |= {"otb_whole_tail": "otb", "otb_steps": "otb"}
