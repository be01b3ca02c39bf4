"""GDPO (Group reward-Decoupled normalization Policy Optimization, arXiv 2601.05242): with
several reward functions, GRPO normalizes their weighted sum within each group, so a reward
with a larger spread drowns the others and distinct reward combinations collapse into one
advantage. GDPO normalizes each reward within its group first, sums them with their weights,
then normalizes the sum over the batch:

    Â_i = (s_i − mean_batch(s)) / (std_batch(s) + ε),
    s_i = Σ_k w_k · (r_ik − mean_group(r_k)) / (std_group(r_k) + ε)

(unbiased stds). As TRL's ``multi_objective_aggregation="normalize_then_sum"``: a reward with
no opinion on a row (NaN) leaves that row out of its own statistics and adds 0 to its sum; a
row no reward scored gets Â = 0 and leaves the batch statistics; online the batch is the
whole rollout batch, however many mini-batches it is split into (TRL's generation batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from alignlib.estimator.advantages import (
    ADVANTAGES,
    Advantage,
    AdvantageResult,
    group_statistics,
)
from alignlib.estimator.batch import Batch
from alignlib.estimator.registry import check_number
from alignlib.estimator.units import Likelihood


def normalized_in_groups(values: Tensor, group_ids: Tensor, rows: Tensor, eps: float) -> Tensor:
    """[R] (v − mean_group) / (std_group + ε) over the ``rows`` whose value is not NaN; 0 for
    the others and for a group with one such row."""
    seen = rows & ~values.isnan()
    _, count, mean, std = group_statistics(values.nan_to_num(0.0), group_ids, seen)
    normalized = (values - mean) / (std + eps)
    return normalized.where(seen & (count > 1), values.new_zeros(()))


@ADVANTAGES.register("gdpo")
@dataclass(frozen=True)
class DecoupledGroupNormalized(Advantage):
    """GDPO: each reward normalized in its group, weighted, summed, then batch-normalized."""

    needs: ClassVar[dict[str, str]] = {
        "rewards": "GDPO learns from rewards",
        "reward_parts": "GDPO normalizes each reward function's values separately",
        "reward_weights": "GDPO sums the normalized rewards with their weights",
        "group_ids": "GDPO's first normalization is within each prompt's group",
    }
    eps: float = 1e-4
    """ε of both normalizations (TRL's value)."""

    def __post_init__(self) -> None:
        check_number("DecoupledGroupNormalized", "eps", self.eps, ge=0)

    def min_group_rows(self) -> int:
        return 2

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        assert batch.reward_parts is not None and batch.reward_weights is not None
        assert batch.group_ids is not None
        dtype = batch.logprobs.dtype
        parts, weights = batch.reward_parts.to(dtype), batch.reward_weights.to(dtype)
        scored = rows & ~parts.isnan().all(-1)
        total = torch.zeros_like(parts[:, 0])
        for k in range(parts.shape[1]):
            total = total + weights[:, k] * normalized_in_groups(
                parts[:, k], batch.group_ids, scored, self.eps
            )
        everyone = torch.zeros_like(batch.group_ids)
        _, _, mean, std = group_statistics(total, everyone, scored)
        adv = ((total - mean) / (std + self.eps)).where(scored, total.new_zeros(()))
        return AdvantageResult(adv * rows.to(dtype))
