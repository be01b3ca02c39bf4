"""Group baselines beyond GRPO's mean and std, each from its paper and checked against verl
(max@k's leave-one-out baseline: :mod:`alignlib.estimator.max_at_k`):

- OPO (Hao et al. 2025, "On-Policy RL with Optimal Reward Baseline", arXiv 2505.23585): the
  baseline that minimizes the gradient's variance, approximated by the group's rewards weighted
  by their responses' lengths, Â_i = R_i − Σ_j |y_j| R_j / Σ_j |y_j| (verl ``opo``);
- GPG (Chu et al. 2025, "GPG: A Simple and Strong Reinforcement Learning Baseline for Model
  Reasoning", arXiv 2504.02546): the group mean as baseline, rescaled by α = B / (B − M), M the
  rows of groups whose rewards are all equal, so the rows that carry a signal are not diluted by
  those that carry none (the authors' ``adjust_gd``; verl ``gpg`` counts differently, below);
- RAFT++ and Reinforce-Rej (Xiong et al. 2025, "A Minimalist Approach to LLM Reasoning: from
  Rejection Sampling to Reinforce", arXiv 2504.11343), as their released code computes them
  (RLHFlow/Minimal-RL, ``compute_raft_outcome_advantage`` and
  ``compute_reinforce_rej_outcome_advantage``): the reward floored at 0, and the reward itself
  on the prompts whose rewards differ, 0 on the others (kept in the batch and its
  denominators; the paper's form drops those rows instead, with a row filter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

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
from alignlib.estimator.registry import check_choice, check_number
from alignlib.estimator.units import Likelihood

EQUAL_REWARDS = "a group whose rewards are all equal would divide 0 by 0"


@ADVANTAGES.register("opo")
@dataclass(frozen=True)
class LengthWeightedBaseline(Advantage):
    """OPO: Â_i = R_i − Σ_j |y_j| R_j / Σ_j |y_j| over the row's group, |y| its completion's
    tokens (the mask's); a group of one row has baseline 0 (verl), so Â = R."""

    needs: ClassVar[dict[str, str]] = REWARD_NEEDS

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        assert batch.rewards is not None and batch.group_ids is not None
        rewards = batch.rewards.to(batch.logprobs.dtype)
        lengths = batch.mask.sum(-1).to(rewards.dtype)
        weighted, _, _, _ = group_statistics(lengths * rewards, batch.group_ids, rows)
        length, count, _, _ = group_statistics(lengths, batch.group_ids, rows)
        baseline = (weighted / length.clamp(min=1)).where(count > 1, rewards.new_zeros(()))
        return AdvantageResult((rewards - baseline) * rows.to(rewards.dtype))


@ADVANTAGES.register("gpg")
@dataclass(frozen=True)
class CorrectedGroupMean(Advantage):
    """GPG: Â_i = α·(R_i − mean_group) (optionally / (std_group + ε)); α = B / (B − M) over
    the rows of the batch (online: the whole rollout batch), reported as ``alpha``."""

    needs: ClassVar[dict[str, str]] = REWARD_NEEDS
    metric_weights: ClassVar[Literal["pair", "summed", "unit"]] = "unit"
    alpha: Literal["valid_groups", "nonzero_rewards", "none"] = "valid_groups"
    """How α is counted. ``valid_groups``: B over the rows of groups whose rewards differ (the
    paper's B/(B − M), the authors' code with ``adjust_gd``). ``nonzero_rewards``: B over the
    rows whose reward is not 0, as verl's ``gpg`` estimator counts (the same with rewards that
    are 0 only when a group has no signal, not with 0/1 rewards). ``none``: α = 1."""
    std: bool = False
    """Divide by the group's unbiased std + ε (the authors' ``scale_rewards``, F_norm = std);
    off in their recipes and in verl (F_norm = 1)."""
    eps: float = 1e-4
    """ε of the std division (the authors' code)."""

    def __post_init__(self) -> None:
        check_choice(
            "CorrectedGroupMean", "alpha", self.alpha, ("valid_groups", "nonzero_rewards", "none")
        )
        check_number("CorrectedGroupMean", "eps", self.eps, gt=0, why=EQUAL_REWARDS)

    def min_group_rows(self) -> int:
        return 2

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        assert batch.rewards is not None and batch.group_ids is not None
        rewards = batch.rewards.to(batch.logprobs.dtype)
        _, count, mean, std = group_statistics(rewards, batch.group_ids, rows)
        adv = rewards - mean
        if self.std:
            adv = adv / (std + self.eps)
        adv = adv.where(count > 1, rewards.new_zeros(()))
        alpha = self.scale(rewards, batch.group_ids, rows)
        selected = rows.to(rewards.dtype)
        units = likelihood.unit_mask(batch.mask).sum(-1).to(rewards.dtype)
        # A per-unit mean of α·units is α itself, however the rows are split into micro-batches.
        return AdvantageResult(
            alpha * adv * selected, row_metrics={"alpha": alpha * units * selected}
        )

    def scale(self, rewards: Tensor, group_ids: Tensor, rows: Tensor) -> Tensor:
        """α = B / (the rows counted), ≥ 1 row counted."""
        if self.alpha == "none":
            return rewards.new_ones(())
        if self.alpha == "valid_groups":
            top, bottom = group_extremes(rewards, group_ids, rows)
            counted = rows & (top > bottom)
        else:
            counted = rows & (rewards != 0)
        return rows.sum().to(rewards.dtype) / counted.sum().clamp(min=1).to(rewards.dtype)


@ADVANTAGES.register("positive_reward")
@dataclass(frozen=True)
class PositiveReward(Advantage):
    """RAFT's released advantage: Â = max(R, 0), so only positively rewarded rows move (with
    0/1 or ±1 rewards Â is the indicator of a correct answer); the others keep their tokens in
    the denominators (:class:`~alignlib.estimator.masks.RewardFilter` removes them instead)."""

    needs: ClassVar[dict[str, str]] = REWARD_NEEDS

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        assert batch.rewards is not None
        rewards = batch.rewards.to(batch.logprobs.dtype)
        return AdvantageResult(rewards.clamp(min=0) * rows.to(rewards.dtype))


@ADVANTAGES.register("mixed_group_reward")
@dataclass(frozen=True)
class MixedGroupReward(Advantage):
    """Reinforce-Rej's released advantage: Â_i = R_i − c where the rewards of row i's group
    differ, 0 where they are all equal (a group of one row keeps R − c, as the released code's
    std of 1 for it); no mean subtracted, no std divided."""

    needs: ClassVar[dict[str, str]] = {
        "rewards": "Â = R − c reads each row's reward",
        "group_ids": "rows of a group whose rewards are all equal get Â = 0",
    }
    baseline: float = 0.0
    """c, subtracted from every reward (with 0/1 rewards, reward weight 2 and c = 1 give the
    paper's ±1)."""

    def __post_init__(self) -> None:
        check_number("MixedGroupReward", "baseline", self.baseline)

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        assert batch.rewards is not None and batch.group_ids is not None
        rewards = batch.rewards.to(batch.logprobs.dtype)
        top, bottom = group_extremes(rewards, batch.group_ids, rows)
        _, count, _, _ = group_statistics(rewards, batch.group_ids, rows)
        mixed = (top > bottom) | (count == 1)
        return AdvantageResult((rewards - self.baseline) * (rows & mixed).to(rewards.dtype))
