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
    group_extremes,
    group_statistics,
)
from alignlib.estimator.batch import Batch
from alignlib.estimator.group_baselines import EQUAL_REWARDS
from alignlib.estimator.registry import check_number
from alignlib.estimator.units import Likelihood


def log_binomial(a: Tensor, b: Tensor) -> Tensor:
    """log C(a, b) elementwise; −inf where b < 0 or b > a (no such subsets)."""
    valid = (b >= 0) & (b <= a)
    a, b = a.clamp(min=0), b.clamp(min=0)
    value = torch.lgamma(a + 1) - torch.lgamma(b + 1) - torch.lgamma((a - b).clamp(min=0) + 1)
    return value.where(valid, torch.full_like(value, float("-inf")))


@dataclass(frozen=True)
class RankedGroups:
    """The selected rows sorted by group, then reward (stable); every field in that order."""

    order: Tensor
    """[R] row indices (unselected rows sort apart, as a group of their own)."""
    rank: Tensor
    """[R] 1-based rank of the row's reward in its group."""
    size: Tensor
    """[R] n: the selected rows of the row's group."""
    start: Tensor
    """[R] the position of the group's first row."""
    shifted: Tensor
    """[R] the reward minus its group's lowest: a group of equal rewards is exactly 0."""
    selected: Tensor
    """[R] bool: the row is selected."""

    def prefix(self, values: Tensor) -> Tensor:
        """[R] Σ of ``values`` over the rows up to and including this one, within its group."""
        running = torch.cumsum(values, 0)
        return running - (running - values)[self.start]

    def total(self, values: Tensor) -> Tensor:
        """[R] Σ of ``values`` over the row's whole group."""
        end = (self.start + self.size.long() - 1).clamp(0, values.numel() - 1)
        return self.prefix(values)[end]


def ranked_groups(rewards: Tensor, group_ids: Tensor, rows: Tensor) -> RankedGroups:
    _, inverse = torch.unique(group_ids, return_inverse=True)
    group = inverse.where(rows, torch.full_like(inverse, -1))  # unselected rows: apart
    order = torch.argsort(rewards, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    position = torch.arange(order.numel(), device=order.device)
    key = group[order] + 1  # ≥ 0
    first = position.new_full((order.numel() + 1,), order.numel())
    first = first.scatter_reduce(0, key, position, "amin")
    start = first[key]
    count = group_statistics(rewards, group_ids, rows)[1]
    lowest = group_extremes(rewards, group_ids, rows)[1]
    return RankedGroups(
        order=order,
        rank=(position - start + 1).to(rewards.dtype),
        size=count[order],
        start=start,
        shifted=(rewards - lowest)[order],
        selected=rows[order],
    )


def leave_one_out_max(rewards: Tensor, group_ids: Tensor, rows: Tensor, k: int | None) -> Tensor:
    """[R] s^(loo−1) of each selected row within its group; ``k`` None: the group's size;
    a group smaller than k uses its size; a group of one row, and unselected rows, get 0.

    By the hockey-stick identity C(r−1, k−1) = Σ_{j<r} C(j−1, k−2) the rank form is
    Σ_{j<r} w_j (g_(r) − g_(j)), w_j = C(j−1, k−2)/C(n, k): only differences of rewards, so a
    group of equal rewards gives exactly 0."""
    ranked = ranked_groups(rewards, group_ids, rows)
    g, n = ranked.shifted, ranked.size
    size = n if k is None else n.clamp(max=k)
    weight = torch.exp(log_binomial(ranked.rank - 1, size - 2) - log_binomial(n, size))
    below = ranked.prefix(weight) - weight  # Σ_{j<r} w_j
    below_weighted = ranked.prefix(weight * g) - weight * g  # Σ_{j<r} w_j g_(j)
    adv = (g * below - below_weighted).where((n > 1) & ranked.selected, torch.zeros_like(g))
    return torch.zeros_like(rewards).index_put((ranked.order,), adv)


def expected_best_with(rewards: Tensor, group_ids: Tensor, rows: Tensor, k: int) -> Tensor:
    """[R] the mean of max g over the k-subsets of the group that hold the row, minus the
    group's lowest reward: (C(r−1, k−1) g_(r) + Σ_{j>r} C(j−2, k−2) g_(j)) / C(n−1, k−1)
    (k capped at n; 0 for unselected rows)."""
    ranked = ranked_groups(rewards, group_ids, rows)
    g, n = ranked.shifted, ranked.size
    size = n.clamp(max=k)
    subsets = log_binomial(n - 1, size - 1)
    own = torch.exp(log_binomial(ranked.rank - 1, size - 1) - subsets)
    lifted = torch.exp(log_binomial(ranked.rank - 2, size - 2) - subsets) * g
    above = ranked.total(lifted) - ranked.prefix(lifted)  # Σ_{j>r}
    value = (own * g + above).where(ranked.selected, torch.zeros_like(g))
    return torch.zeros_like(rewards).index_put((ranked.order,), value)


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


@ADVANTAGES.register("passk_analytic")
@dataclass(frozen=True)
class PassAtKTraining(Advantage):
    """Pass@k Training's analytic advantage (Chen et al. 2025, arXiv 2508.10751; the authors'
    ``passk_adv.py``): each row's reward is the mean pass@k of the k-subsets of its group that
    hold it, r̃_i, normalized as GRPO with the Bernoulli std of the group's pass@k ρ,

        Â_i = (r̃_i − ρ) / (sqrt(ρ (1 − ρ)) + ε),   ρ = 1 − C(n − c, k) / C(n, k),

    so a correct row gets (1 − ρ)/σ and a wrong one (1 − ρ − C(n−c−1, k−1)/C(n−1, k−1))/σ. For
    rewards in [0, 1] that are not 0/1 the subsets' best reward stands for their pass (max@k);
    a reward outside [0, 1] is refused (σ would not be a std)."""

    needs: ClassVar[dict[str, str]] = REWARD_NEEDS
    k: int = 4
    """The k of pass@k (≥ 2; a group smaller than k uses its size)."""
    eps: float = 1e-6

    def __post_init__(self) -> None:
        check_number("PassAtKTraining", "k", self.k, ge=2, why="k = 1 is the mean: use grpo")
        check_number("PassAtKTraining", "eps", self.eps, gt=0, why=EQUAL_REWARDS)

    def min_group_rows(self) -> int:
        return self.k

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        assert batch.rewards is not None and batch.group_ids is not None
        rewards = batch.rewards.to(batch.logprobs.dtype)
        outside = rows & ((rewards < 0) | (rewards > 1))
        if bool(outside.any()):
            row = int(outside.nonzero()[0])
            raise ValueError(
                f"passk_analytic: rewards must lie in [0, 1] (pass@k of 0/1 verdicts); row {row} "
                f"has {float(rewards[row]):g}: scale the rewards (online.rewards[].weight) or "
                "use pkpo, which takes any reward"
            )
        group_ids = batch.group_ids
        best = expected_best_with(rewards, group_ids, rows, self.k)
        _, count, spread_mean, _ = group_statistics(best, group_ids, rows)
        top, lowest = group_extremes(rewards, group_ids, rows)
        rho = (spread_mean + lowest).clamp(0, 1)  # the mean of r̃ over the group is ρ
        adv = (best - spread_mean) / ((rho * (1 - rho)).sqrt() + self.eps)
        # ρ = 1 when every k-subset holds a reward of 1 (fewer than k rows below 1), ρ = 0 when
        # every reward is 0: then σ = 0 and every r̃ = ρ, so Â = 0, exactly (not rounding / ε).
        below_one = group_statistics((rewards < 1).to(rewards.dtype), group_ids, rows)[0]
        certain = (below_one < count.clamp(max=self.k)) | (top == 0)
        return AdvantageResult(adv.where(rows & (count > 1) & ~certain, rewards.new_zeros(())))
