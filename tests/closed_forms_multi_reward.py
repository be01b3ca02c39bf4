"""GDPO's closed form (arXiv 2601.05242; TRL's normalize_then_sum) written as loops over
rewards, groups and rows in float64, and a batch with several rewards of different scales,
a reward with no opinion on some rows, a row no reward scored, and a singleton group."""

from __future__ import annotations

import math

import torch
from batches import rl_batch
from torch import Tensor

from alignlib.estimator import Batch

WEIGHTS = [1.0, 0.5, 2.0]


def multi_reward_batch(seed: int = 0) -> Batch:
    b = rl_batch(num_groups=4, group_size=4, width=9, seed=seed, spread=0.3)
    gen = torch.Generator().manual_seed(50 + seed)
    rows = b.num_rows
    parts = torch.stack(
        [
            torch.randint(0, 2, (rows,), generator=gen).double(),  # a 0/1 verifier
            10 * torch.rand(rows, generator=gen, dtype=torch.float64),  # a wide, dense score
            torch.rand(rows, generator=gen, dtype=torch.float64),
        ],
        dim=-1,
    )
    parts[[1, 6], 2] = math.nan  # the third reward had no opinion on two rows
    parts[9] = math.nan  # no reward scored row 9
    group_ids = b.group_ids.clone()
    group_ids[15] = 99  # a group of one row
    weights = torch.tensor(WEIGHTS, dtype=torch.float64).expand(rows, -1)
    total = (parts.nan_to_num(0.0) * weights).sum(-1)
    return b.replace(rewards=total, reward_parts=parts, reward_weights=weights, group_ids=group_ids)


def std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def gdpo_advantages(b: Batch, eps: float = 1e-4) -> list[float]:
    parts, groups = b.reward_parts.tolist(), b.group_ids.tolist()
    rows = range(len(parts))
    scored = [i for i in rows if not all(math.isnan(v) for v in parts[i])]
    summed = dict.fromkeys(scored, 0.0)
    for k, weight in enumerate(WEIGHTS):
        for g in set(groups):
            members = [i for i in scored if groups[i] == g and not math.isnan(parts[i][k])]
            if len(members) < 2:
                continue
            values = [parts[i][k] for i in members]
            mean, spread = sum(values) / len(values), std(values)
            for i in members:
                summed[i] += weight * (parts[i][k] - mean) / (spread + eps)
    totals = list(summed.values())
    mean, spread = sum(totals) / len(totals), std(totals)
    return [(summed[i] - mean) / (spread + eps) if i in summed else 0.0 for i in rows]


def closed_gdpo(b: Batch, eps: float = 0.2) -> Tensor:
    """GRPO's clipped loss (per-sequence token mean, averaged over rows) with GDPO's Â."""
    adv = torch.tensor(gdpo_advantages(b), dtype=torch.float64).unsqueeze(-1)
    ratio = torch.exp(b.logprobs - b.old_logprobs)
    loss = torch.maximum(-ratio * adv, -ratio.clamp(1 - eps, 1 + eps) * adv)
    return ((loss * b.mask).sum(-1) / b.mask.sum(-1)).mean()
