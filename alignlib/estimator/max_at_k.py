"""Pass@k / max@k: advantages whose expected policy gradient is that of E[max of k rewards],
the best of k independent samples, rather than of one sample's mean reward.

With n samples of a prompt and their rewards g, Walder & Karkhanis (2025, "Pass@K Policy
Optimization", arXiv 2505.15201, eq. 33: s^(loo−1)) average over every k-subset I holding row i
the gap its presence makes to the subset's best,

    Â_i = (1 / C(n, k)) Σ_{|I| = k, i ∈ I} (max_{j∈I} g_j − max_{j∈I∖i} g_j),

unbiased because the subtracted best of the others does not depend on sample i. Sorted
ascending (ties in any fixed order), row i at rank r gets

    Â_i = (C(r−1, k−1) g_(r) − Σ_{j<r} C(j−1, k−2) g_(j)) / C(n, k),

O(n log n). With k = n this is Tang et al. (2025, arXiv 2503.19595): r_max − r_second on the
group's best row, 0 on the others (verl's ``grpo_passk``); with 0/1 rewards a wrong sample
gets 0 and a right one the share of the k-subsets where it is the only right sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from alignlib.estimator.advantages import (
    ADVANTAGES,
    REWARD_NEEDS,
    Advantage,
    AdvantageResult,
    group_statistics,
)
from alignlib.estimator.batch import Batch
from alignlib.estimator.group_baselines import EQUAL_REWARDS, group_extremes
from alignlib.estimator.registry import check_number
from alignlib.estimator.units import Likelihood


def log_binomial(a: Tensor, b: Tensor) -> Tensor:
    """log C(a, b) elementwise; −inf where b < 0 or b > a (no such subsets)."""
    valid = (b >= 0) & (b <= a)
    a, b = a.clamp(min=0), b.clamp(min=0)
    value = torch.lgamma(a + 1) - torch.lgamma(b + 1) - torch.lgamma((a - b).clamp(min=0) + 1)
    return value.where(valid, torch.full_like(value, float("-inf")))


def sorted_in_groups(rewards: Tensor, group: Tensor) -> tuple[Tensor, Tensor]:
    """(order, 1-based rank within the group) with rows sorted by group, then reward (stable)."""
    order = torch.argsort(rewards, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    position = torch.arange(order.numel(), device=order.device)
    sorted_group = group[order]
    start = torch.full_like(position, order.numel()).scatter_reduce(
        0, sorted_group - sorted_group.min(), position, "amin"
    )
    return order, position - start[sorted_group - sorted_group.min()] + 1


def leave_one_out_max(rewards: Tensor, group_ids: Tensor, rows: Tensor, k: int | None) -> Tensor:
    """[R] s^(loo−1) of each selected row within its group; ``k`` None: the group's size;
    a group smaller than k uses its size; a group of one row, and unselected rows, get 0.

    By the hockey-stick identity C(r−1, k−1) = Σ_{j<r} C(j−1, k−2) the rank form is
    Σ_{j<r} w_j (g_(r) − g_(j)), w_j = C(j−1, k−2)/C(n, k): only differences of rewards, so a
    group of equal rewards gives exactly 0 (rewards are taken from their group's minimum)."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    group = inverse.where(rows, torch.full_like(inverse, -1))  # unselected rows: apart
    count = group_statistics(rewards, group_ids, rows)[1]
    lowest = group_extremes(rewards, group_ids, rows)[1]
    order, rank = sorted_in_groups(rewards, group)
    g, n = (rewards - lowest)[order], count[order]
    size = n if k is None else n.clamp(max=k)
    weight = torch.exp(log_binomial(rank.to(g.dtype) - 1, size - 2) - log_binomial(n, size))
    # Σ over the rows sorted before this one in its group, of w_j and of w_j·g_(j).
    first = rank == 1
    start = torch.cummax(torch.arange(g.numel(), device=g.device).where(first, 0), 0)[0]
    earlier_weight = torch.cumsum(weight, 0) - weight
    earlier_weighted = torch.cumsum(weight * g, 0) - weight * g
    below = earlier_weight - earlier_weight[start]
    below_weighted = earlier_weighted - earlier_weighted[start]
    adv_sorted = (g * below - below_weighted).where((n > 1) & rows[order], torch.zeros_like(g))
    return torch.zeros_like(rewards).index_put((order,), adv_sorted)


@ADVANTAGES.register("passk")
@dataclass(frozen=True)
class MaxAtK(Advantage):
    """Â = s^(loo−1) (eq. 33 of PKPO) per group: for ``k`` None (the group's size, Tang et al.)
    r_max − r_second on the best row (the first of equals: a tie at the top gives 0), 0
    elsewhere; ``std``: divided by the group's unbiased std + ε (verl's ``grpo_passk``)."""

    needs: ClassVar[dict[str, str]] = REWARD_NEEDS
    k: int | None = None
    """The k of pass@k (≥ 2, at most the rollouts per prompt); None: all of them."""
    std: bool = True
    eps: float = 1e-6

    def __post_init__(self) -> None:
        check_number("MaxAtK", "k", self.k, ge=2, optional=True, why="k = 1 is the mean: use rloo")
        check_number("MaxAtK", "eps", self.eps, gt=0, why=EQUAL_REWARDS)

    def min_group_rows(self) -> int:
        return 2 if self.k is None else self.k

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        assert batch.rewards is not None and batch.group_ids is not None
        rewards = batch.rewards.to(batch.logprobs.dtype)
        adv = leave_one_out_max(rewards, batch.group_ids, rows, self.k)
        if self.std:
            adv = adv / (group_statistics(rewards, batch.group_ids, rows)[3] + self.eps)
        return AdvantageResult(adv)
