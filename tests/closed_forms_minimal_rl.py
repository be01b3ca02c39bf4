"""RAFT++ and Reinforce-Rej (Xiong et al. 2025, arXiv 2504.11343) written row by row and token by
token in float64 for test_gradient_identity.py: the paper's forms (rejected rows or prompts out
of the batch, a mean over samples of per-sample token means) and the released code's
(RLHFlow/Minimal-RL: Â = max(R, 0), or R on prompts whose rewards differ and 0 elsewhere, verl's
PPO loss with dual clip 3, a token mean over every row), each with the KL to π_ref (k3, 0.001)."""

from __future__ import annotations

import math

import torch
from batches import rl_batch
from torch import Tensor

from alignlib.estimator import Batch

BETA = 0.001
LEVELS = torch.tensor([-1.0, 0.0, 0.5, 1.0], dtype=torch.float64)


def signed_batch(seed: int = 0) -> Batch:
    """5 groups of 4 with rewards ±1: group 0 all right, group 1 all wrong, group 2 mixed with
    row 9 wrong and its first valid token's ρ = e^1.5 (the dual clip at 3 binds), row 19 alone in
    its group; π_old 0.5 from π elsewhere, so both clips happen."""
    b = rl_batch(num_groups=5, group_size=4, seed=seed, spread=0.5)
    rewards = 2 * b.rewards - 1
    rewards[4:8] = -1.0
    rewards[8:12] = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=rewards.dtype)
    old = b.old_logprobs.clone()
    first = int(b.mask[9].nonzero()[0])
    old[9, first] = b.logprobs[9, first].detach() - 1.5
    group_ids = b.group_ids.clone()
    group_ids[19] = 99
    return b.replace(rewards=rewards, group_ids=group_ids, old_logprobs=old)


def graded_batch(seed: int = 0) -> Batch:
    """signed_batch with rewards drawn from {−1, 0, 0.5, 1}: max(R, 0) is not an indicator."""
    b = signed_batch(seed)
    gen = torch.Generator().manual_seed(40 + seed)
    return b.replace(rewards=LEVELS[torch.randint(0, 4, (b.num_rows,), generator=gen)])


def valid(b: Batch, i: int) -> list[int]:
    return [t for t in range(b.mask.shape[1]) if b.mask[i, t] == 1]


def token_loss(b: Batch, i: int, t: int, adv: float, eps: float, dual: float | None) -> Tensor:
    """verl's PPO loss for one token: max(−Âρ, −Â·clip(ρ)), capped at −Â·c when Â < 0."""
    ratio = torch.exp(b.logprobs[i, t] - b.old_logprobs[i, t])
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps))
    if dual is not None and adv < 0:
        loss = torch.minimum(loss, torch.tensor(-adv * dual, dtype=torch.float64))
    return loss


def kl_k3(b: Batch, i: int, t: int) -> Tensor:
    log_q = b.ref_logprobs[i, t] - b.logprobs[i, t]
    return torch.exp(log_q) - log_q - 1


def per_token(
    b: Batch, i: int, t: int, adv: float, ratio: bool, dual: float | None = None
) -> Tensor:
    surrogate = token_loss(b, i, t, adv, 0.2, dual) if ratio else -adv * b.logprobs[i, t]
    return surrogate + BETA * kl_k3(b, i, t)


def sample_mean(b: Batch, rows: list[int], adv: list[float], ratio: bool, dual=None) -> Tensor:
    """(1/|rows|) Σ_i (1/|y_i|) Σ_t loss: the papers' mean over the kept samples."""
    total = torch.zeros((), dtype=torch.float64)
    for i in rows:
        tokens = valid(b, i)
        total = total + sum(per_token(b, i, t, adv[i], ratio, dual) for t in tokens) / len(tokens)
    return total / len(rows)


def all_tokens_mean(b: Batch, adv: list[float], ratio: bool, dual=None) -> Tensor:
    """Σ_i Σ_t loss / Σ_i |y_i| over every row: verl's token-mean."""
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for i in range(b.num_rows):
        for t in valid(b, i):
            total = total + per_token(b, i, t, adv[i], ratio, dual)
            count += 1
    return total / count


def closed_raft_paper(b: Batch, ratio: bool = True) -> Tensor:
    kept = [i for i, r in enumerate(b.rewards.tolist()) if r > 0]
    return sample_mean(b, kept, [1.0] * b.num_rows, ratio)


def closed_raft_released(b: Batch, ratio: bool = True) -> Tensor:
    return all_tokens_mean(b, [max(r, 0.0) for r in b.rewards.tolist()], ratio)


def mixed_rows(b: Batch) -> list[bool]:
    """Whether each row's group has rewards that differ (a group of one row: the released
    code's std of 1 keeps it)."""
    ids, r = b.group_ids.tolist(), b.rewards.tolist()
    out = []
    for i in range(b.num_rows):
        members = [r[j] for j in range(len(ids)) if ids[j] == ids[i]]
        out.append(len(members) == 1 or max(members) > min(members))
    return out


def closed_reinforce_rej_paper(b: Batch, baseline: float = 0.0) -> Tensor:
    ids, r = b.group_ids.tolist(), b.rewards.tolist()
    kept = [
        i for i in range(b.num_rows) if len({r[j] for j in range(len(ids)) if ids[j] == ids[i]}) > 1
    ]
    return sample_mean(b, kept, [x - baseline for x in r], ratio=True)


def closed_reinforce_rej_released(b: Batch, baseline: float = 0.0) -> Tensor:
    mixed = mixed_rows(b)
    adv = [(x - baseline) if mixed[i] else 0.0 for i, x in enumerate(b.rewards.tolist())]
    return all_tokens_mean(b, adv, ratio=True, dual=3.0)


def any_dual_clip(b: Batch) -> bool:
    """Whether some token of a negative row of a mixed group has ρ above 3 (so the released
    form's dual clip binds)."""
    r, mixed = b.rewards.tolist(), mixed_rows(b)
    return any(
        r[i] < 0
        and mixed[i]
        and math.exp(float((b.logprobs[i, t] - b.old_logprobs[i, t]).detach())) > 3
        for i in range(b.num_rows)
        for t in valid(b, i)
    )


CASES = {
    "raft_pp": (graded_batch, closed_raft_paper, {}),
    "raft_pp_released": (graded_batch, closed_raft_released, {"form": "released"}),
    "raft_paper_no_is": (
        graded_batch,
        lambda b: closed_raft_paper(b, ratio=False),
        {"importance_sampling": False},
    ),
    "raft_released_no_is": (
        graded_batch,
        lambda b: closed_raft_released(b, ratio=False),
        {"form": "released", "importance_sampling": False},
    ),
    "reinforce_rej": (signed_batch, closed_reinforce_rej_paper, {}),
    "reinforce_rej_released": (
        signed_batch,
        closed_reinforce_rej_released,
        {"form": "released"},
    ),
    "reinforce_rej_baseline": (
        graded_batch,
        lambda b: closed_reinforce_rej_paper(b, baseline=0.25),
        {"baseline": 0.25},
    ),
    "reinforce_rej_released_baseline": (
        graded_batch,
        lambda b: closed_reinforce_rej_released(b, baseline=0.25),
        {"form": "released", "baseline": 0.25},
    ),
}
VARIANTS = {
    "raft_pp_released": "raft_pp",
    "raft_paper_no_is": "raft_pp",
    "raft_released_no_is": "raft_pp",
    "reinforce_rej_baseline": "reinforce_rej",
    "reinforce_rej_released_baseline": "reinforce_rej",
    "reinforce_rej_released": "reinforce_rej",
}
