"""Independent float64 closed forms of RLOO, GSPO, LUSPO, GMPO, CISPO, DAPO, SAPO, VESPO, Lite
PPO and GRPO + KL (METHODS.md §3b; the KL also importance-weighted, DeepSeek-V3.2), written from
the papers' formulas with plain autograd, for test_gradient_identity.py."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from alignlib.estimator import Batch


def advantages(b: Batch, std: bool = True, keep: Tensor | None = None) -> Tensor:
    """(R − mean)/(std + 1e-6) per group over the rows ``keep`` (default all), by explicit loop."""
    keep = torch.ones(b.num_rows, dtype=torch.bool) if keep is None else keep
    adv = torch.zeros_like(b.rewards)
    for g in b.group_ids.unique():
        members = ((b.group_ids == g) & keep).nonzero().flatten()
        if members.numel() < 2:
            continue
        r = b.rewards[members]
        adv[members] = (r - r.mean()) / (r.std() + 1e-6) if std else r - r.mean()
    return adv


def per_seq_token_mean(values: Tensor, m: Tensor) -> Tensor:
    return ((values * m).sum(-1) / m.sum(-1)).mean()


def clipped(ratio: Tensor, adv: Tensor, low: float, high: float) -> Tensor:
    return torch.maximum(-ratio * adv, -ratio.clamp(low, high) * adv)


def closed_gspo(b: Batch, eps_low: float = 3e-4, eps_high: float = 4e-4) -> Tensor:
    """Eq. 5: mean over sequences of −min(s_i A_i, clip(s_i) A_i), s_i the geometric mean ratio."""
    m = b.mask
    s = torch.exp(((b.logprobs - b.old_logprobs) * m).sum(-1) / m.sum(-1))
    return clipped(s, advantages(b), 1 - eps_low, 1 + eps_high).mean()


def closed_luspo(b: Batch, eps_low: float = 3e-4, eps_high: float = 4e-4) -> Tensor:
    """LUSPO: GSPO's per-sequence loss times the sequence's length, mean over sequences."""
    m = b.mask
    s = torch.exp(((b.logprobs - b.old_logprobs) * m).sum(-1) / m.sum(-1))
    return (m.sum(-1) * clipped(s, advantages(b), 1 - eps_low, 1 + eps_high)).mean()


def rloo_advantages(b: Batch, beta: float = 0.05, normalize: bool = False) -> Tensor:
    """TRL's RLOOTrainer: r − β·Σ_t (ℓ_old − ℓ_ref), minus the mean of the group's others,
    then optionally (A − mean)/(unbiased std + 1e-4) over the batch; by explicit loops."""
    rewards = b.rewards - beta * ((b.old_logprobs - b.ref_logprobs) * b.mask).sum(-1)
    adv = torch.zeros_like(rewards)
    for i in range(b.num_rows):
        others = [j for j in range(b.num_rows) if b.group_ids[j] == b.group_ids[i] and j != i]
        adv[i] = rewards[i] - rewards[others].mean() if others else 0.0
    return (adv - adv.mean()) / (adv.std() + 1e-4) if normalize else adv


def closed_rloo(b: Batch, beta: float = 0.05, eps: float = 0.2, normalize: bool = False) -> Tensor:
    """Mean over sequences of the clipped loss of the whole-sequence ratio."""
    ratio = torch.exp(((b.logprobs - b.old_logprobs) * b.mask).sum(-1))
    return clipped(ratio, rloo_advantages(b, beta, normalize), 1 - eps, 1 + eps).mean()


def closed_cispo(b: Batch, eps_high: float = 0.2) -> Tensor:
    """Token-mean of −sg[min(ρ, 1 + ε_high)]·A·log π (no floor)."""
    weight = torch.exp(b.logprobs - b.old_logprobs).detach().clamp(max=1 + eps_high)
    loss = -weight * advantages(b).unsqueeze(-1) * b.logprobs
    return (loss * b.mask).sum() / b.mask.sum()


def dapo_kept_rows(b: Batch) -> Tensor:
    """Rows of groups whose rewards are not all equal (dynamic sampling's survivors)."""
    keep = torch.zeros(b.num_rows, dtype=torch.bool)
    for g in b.group_ids.unique():
        members = b.group_ids == g
        keep |= members & (b.rewards[members].max() > b.rewards[members].min())
    return keep


def closed_dapo(b: Batch, eps_low: float = 0.2, eps_high: float = 0.28) -> Tensor:
    """Token-mean over the surviving groups' tokens of the clip-higher PPO loss."""
    keep = dapo_kept_rows(b)
    ratio = torch.exp(b.logprobs - b.old_logprobs)
    loss = clipped(ratio, advantages(b, keep=keep).unsqueeze(-1), 1 - eps_low, 1 + eps_high)
    m = b.mask * keep.to(b.mask.dtype).unsqueeze(-1)
    return (loss * m).sum() / m.sum()


def closed_sapo(b: Batch, tau_pos: float = 1.0, tau_neg: float = 1.05) -> Tensor:
    """Per-sequence token mean of −σ(τ(ρ − 1))·4/τ·A."""
    adv = advantages(b).unsqueeze(-1)
    tau = torch.where(adv > 0, tau_pos, tau_neg).to(b.logprobs.dtype)
    ratio = torch.exp(b.logprobs - b.old_logprobs)
    return per_seq_token_mean(-torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv, b.mask)


def k3(b: Batch) -> Tensor:
    log_q = b.ref_logprobs - b.logprobs
    return torch.exp(log_q) - log_q - 1


def closed_grpo_kl(b: Batch, beta: float = 0.04, eps: float = 0.2) -> Tensor:
    """DeepSeekMath eq. 3: the k3 KL inside the same per-sequence token mean as the clip."""
    ratio = torch.exp(b.logprobs - b.old_logprobs)
    per_token = clipped(ratio, advantages(b).unsqueeze(-1), 1 - eps, 1 + eps) + beta * k3(b)
    return per_seq_token_mean(per_token, b.mask)


def closed_grpo_kl_weighted(b: Batch, beta: float = 0.04, eps: float = 0.2) -> Tensor:
    """DeepSeek-V3.2's unbiased KL: each token's k3 times π_θ/π_old (with its gradient), inside
    the same per-sequence token mean as the clip."""
    ratio = torch.exp(b.logprobs - b.old_logprobs)
    clip = clipped(ratio, advantages(b).unsqueeze(-1), 1 - eps, 1 + eps)
    return per_seq_token_mean(clip + beta * ratio * k3(b), b.mask)


def closed_vespo(
    b: Batch, k_pos: float = 2.0, lam_pos: float = 3.0, k_neg: float = 3.0, lam_neg: float = 2.0
) -> Tensor:
    """VESPO: token-mean of −sg[φ(w)]·A·log π, w = Π_t π/π_old over the row (log-ratios
    clamped at ±20, log w to [log 1e-8, 20]), φ(w) = e^λ·w^k·e^(−λw) written directly."""
    m = b.mask
    log_w = ((b.logprobs - b.old_logprobs).clamp(-20, 20) * m).sum(-1)
    w = torch.exp(log_w.clamp(math.log(1e-8), 20.0)).detach()
    adv = advantages(b)
    k = torch.where(adv >= 0, k_pos, k_neg).to(w.dtype)
    lam = torch.where(adv >= 0, lam_pos, lam_neg).to(w.dtype)
    phi = math.e**lam * w**k * torch.exp(-lam * w)
    loss = -phi.unsqueeze(-1) * adv.unsqueeze(-1) * b.logprobs
    return (loss * m).sum() / m.sum()


def closed_gmpo(b: Batch, eps_low: float = 0.4, eps_high: float = 0.4, beta: float = 0.0) -> Tensor:
    """GMPO, eq. 3: mean over rows of −A·Π_t (clipped ρ_t)^(1/|y|), written as a product of
    powers; the clip one-sided by the sign of A (A > 0: ρ ≤ e^ε_high, else ρ ≥ e^−ε_low), plus
    β times each row's mean k3 KL."""
    adv = advantages(b)
    losses = []
    for i in range(b.num_rows):
        keep = b.mask[i] > 0
        ratio = torch.exp(b.logprobs[i, keep] - b.old_logprobs[i, keep])
        if adv[i] > 0:
            ratio = torch.minimum(ratio, torch.tensor(math.exp(eps_high), dtype=ratio.dtype))
        else:
            ratio = torch.maximum(ratio, torch.tensor(math.exp(-eps_low), dtype=ratio.dtype))
        geometric = torch.prod(ratio ** (1.0 / int(keep.sum())))
        losses.append(-adv[i] * geometric + beta * k3(b)[i, keep].mean())
    return torch.stack(losses).mean()


def closed_lite_ppo(b: Batch, eps: float = 0.2) -> Tensor:
    """Lite PPO: Â = (R − group mean) / (std of every reward in the batch + 1e-6), the clipped
    loss averaged over every token of the batch."""
    means = torch.zeros_like(b.rewards)
    for g in b.group_ids.unique():
        members = b.group_ids == g
        means[members] = b.rewards[members].mean() if int(members.sum()) > 1 else b.rewards[members]
    adv = ((b.rewards - means) / (b.rewards.std() + 1e-6)).unsqueeze(-1)
    loss = clipped(torch.exp(b.logprobs - b.old_logprobs), adv, 1 - eps, 1 + eps)
    return (loss * b.mask).sum() / b.mask.sum()


def closed_grpo_dual(b: Batch, c: float = 3.0, eps: float = 0.2) -> Tensor:
    """GRPO with PPO's dual clip: for A < 0 the token loss is at most −c·A."""
    adv = advantages(b).unsqueeze(-1)
    loss = clipped(torch.exp(b.logprobs - b.old_logprobs), adv, 1 - eps, 1 + eps)
    loss = torch.where(adv < 0, torch.minimum(loss, -c * adv), loss)
    return per_seq_token_mean(loss, b.mask)
