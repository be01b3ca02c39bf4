"""The optimal token baseline (OTB; Li et al. 2026, arXiv 2602.07078; verl
``optimal_token_baseline``): a baseline per token position within each group, weighted by each
row's realized energy so far,

    B_k = Σ_i G_i,k · W_i,k / (Σ_i W_i,k + ε),
    W_i,k = Σ_{j ≤ k} (1 − 2π_old(y_j) + Σ_v π_old(v)²),

over the rows i of the group that reach their k-th trained token, Â_i,k = G_i,k − B_k. The
per-token weight 1 − 2π(y) + Σπ² is ‖∇_logits log π(y)‖², the squared norm of the score's
logit gradient (the paper's logit-gradient proxy), read from one forward: π_old's no-grad pass
also gives log Σπ² (``Batch.old_log_sum_sq_probs``). G_i,k is the reward from token k on: the
row's reward less the step rewards placed before it (= R with outcome rewards).

Rows are aligned by their k-th trained token (verl's multi-turn variant; the same as its
position in the response for single-turn rows). With ``zero_tail`` (verl's
``handle_zero_tail``), the one longest row of a group gets baseline 0 past the second-longest
(else B_k = G_k·W/(W + ε) ≈ its own return and its tail would learn nothing); a group of one
row gets baseline 0 (so a group of equal rewards still trains that tail; dynamic sampling
drops such a group all the same). verl's rollout-correction factor ρ̄² in W is not applied."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from alignlib.estimator.advantages import (
    ADVANTAGES,
    Advantage,
    AdvantageResult,
    group_extremes,
    group_statistics,
)
from alignlib.estimator.batch import Batch
from alignlib.estimator.registry import check_number
from alignlib.estimator.units import Likelihood

WHY = "the optimal token baseline weighs each token by 1 − 2π_old(y) + Σ_v π_old(v)²"


@ADVANTAGES.register("otb")
@dataclass(frozen=True)
class OptimalTokenBaseline(Advantage):
    """OTB: Â_i,k = G_i,k − B_k per trained token (module docstring), on [R, T]."""

    needs: ClassVar[dict[str, str]] = {
        "rewards": "the returns G are the rows' rewards",
        "group_ids": "the baseline is taken over the rows of one prompt",
        "old_logprobs": WHY,
        "old_log_sum_sq_probs": WHY,
    }
    reads_steps: ClassVar[bool] = True
    zero_tail: bool = True
    """The one longest row of a group: baseline 0 past the second-longest (verl's default)."""
    eps: float = 1e-8

    def __post_init__(self) -> None:
        check_number("OptimalTokenBaseline", "eps", self.eps, gt=0)

    def min_group_rows(self) -> int:
        return 2

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        assert batch.rewards is not None and batch.group_ids is not None
        assert batch.old_logprobs is not None and batch.old_log_sum_sq_probs is not None
        dtype = batch.logprobs.dtype
        mask = batch.mask.to(dtype) * rows.to(dtype).unsqueeze(-1)
        energy = 1 - 2 * batch.old_logprobs.to(dtype).exp() + batch.old_log_sum_sq_probs.exp()
        cumulative = (energy.to(dtype) * mask).cumsum(-1)
        returns = batch.rewards.to(dtype).unsqueeze(-1).expand_as(mask)
        if batch.step_rewards is not None:  # the step rewards placed before t are behind it
            earlier = batch.step_rewards.to(dtype).cumsum(-1) - batch.step_rewards.to(dtype)
            returns = returns - earlier
        baseline = self.baselines(batch.group_ids, mask, returns, cumulative)
        return AdvantageResult((returns - baseline) * mask)

    def baselines(self, group_ids: Tensor, mask: Tensor, returns: Tensor, weight: Tensor) -> Tensor:
        """[R, T] B of each trained token: the group's W-weighted mean return over the rows
        that reach the same trained-token index."""
        trained = mask > 0
        if not bool(trained.any()):
            return torch.zeros_like(mask)
        row, position = trained.nonzero(as_tuple=True)
        index = (mask.cumsum(-1) - 1).long()[row, position]  # k: the row's k-th trained token
        _, group = torch.unique(group_ids, return_inverse=True)
        groups, width = int(group.max()) + 1 if group.numel() else 0, int(index.max()) + 1
        flat = group[row] * width + index
        zeros = mask.new_zeros(groups * width)
        weighted = zeros.index_add(0, flat, returns[row, position] * weight[row, position])
        total = zeros.index_add(0, flat, weight[row, position])
        per_token = weighted / (total + self.eps)
        lengths = mask.sum(-1)
        rows_in_group = mask.new_zeros(groups).index_add(0, group, (lengths > 0).to(mask.dtype))
        keep = rows_in_group[group[row]] > 1  # a group of one row: baseline 0
        if self.zero_tail:
            keep &= index < self.tail_start(group_ids, lengths)[row]
        out = torch.zeros_like(mask)
        out[row, position] = per_token[flat] * keep.to(mask.dtype)
        return out

    @staticmethod
    def tail_start(group_ids: Tensor, lengths: Tensor) -> Tensor:
        """[R] the trained-token index from which a row's baseline is 0: the second-longest
        length of its group for its one longest row, no limit for every other row."""
        everyone = torch.ones_like(lengths, dtype=torch.bool)
        longest, _ = group_extremes(lengths, group_ids, everyone)
        at_top = lengths == longest
        tops = group_statistics(at_top.to(lengths.dtype), group_ids, everyone)[0]
        second, _ = group_extremes(lengths, group_ids, ~at_top)  # −inf: no other length
        unlimited = torch.full_like(lengths, float("inf"))
        return torch.where(at_top & (tops == 1), second.clamp(min=0), unlimited)
