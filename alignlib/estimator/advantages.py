"""Advantage components computed from rewards (online RL) and the common advantage interface.

Reward-based advantages are computed once per mini-batch in ``prepare`` (they need whole groups),
or once over the rollout batch a source splits into mini-batches (``UnifiedEstimator.precompute``:
a statistic across groups, a batch std or whitening, then spans the rollout batch); the
preference weights in :mod:`alignlib.estimator.preferences` are computed per call from the
live log-probs (they need whole pairs).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from alignlib.estimator.batch import Batch
from alignlib.estimator.registry import Registry, check_choice, check_number
from alignlib.estimator.units import Likelihood


@dataclass
class AdvantageResult:
    values: Tensor
    """[R] or [R, T] detached advantages; zero outside the term's rows."""
    row_loss: Tensor | None = None
    """[R] the method's own loss per row (preference pairs put it on the chosen row)."""
    row_metrics: dict[str, Tensor] = field(default_factory=dict)
    """[R] per-pair statistics on chosen rows (averaged over pairs by the term)."""


class Advantage(ABC):
    """Â: the stop-gradient weight of each unit's score."""

    needs: ClassVar[dict[str, str]] = {}
    per_call: ClassVar[bool] = False
    """True when Â depends on the live log-probs (preference weights): computed in every call,
    so all rows of a pair must be in the same micro-batch. False: computed once per mini-batch."""
    reads_logprobs: ClassVar[bool] = False
    """Computed once per mini-batch from ``batch.logprobs`` (KTO's weights and its z₀): the
    trainer fills them with the present policy's log-probs of every row, by a no-grad pass."""
    metric_weights: ClassVar[Literal["pair", "summed", "unit"]] = "pair"
    """How ``row_metrics`` become mini-batch statistics: ``pair``: per-pair values on the
    chosen rows, averaged over pairs; ``summed``: each row's share, summed as given; ``unit``:
    each row's sum over its units, divided by the mini-batch's unit count (a per-token mean)."""
    distills: ClassVar[bool] = False
    """Â compares the policy with a teacher held in ``ref_logprobs``: a run must name the
    teacher (the initial policy as π_ref would make Â = 0)."""
    reads_steps: ClassVar[bool] = False
    """Â tells apart rows whose rewards sum alike but sit on different steps (process
    supervision): dynamic sampling then keeps a group unless its rows share the whole
    step-reward profile, not only the sum."""
    needs_kl_rows: ClassVar[bool] = False
    """Â reads KL rows (Role.KL: mismatched prompt/completion pairs, KTO's z₀ estimate): the
    data builds them only then."""

    @abstractmethod
    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        """Advantages for the rows selected by ``rows`` ([R] bool)."""

    def requirements(self) -> dict[str, str]:
        return dict(self.needs)

    def returns(self, batch: Batch, rows: Tensor) -> Tensor | None:
        """[R, T] the targets a critic regresses on, when Â comes from a critic's values
        (GAE); None for every advantage that needs no critic."""
        return None

    def min_group_rows(self) -> int:
        """Fewest rows a group needs for Â to be other than 0 (a group baseline of one row is
        that row's own reward): an online run with fewer rollouts per prompt trains nothing."""
        return 1


ADVANTAGES: Registry[Advantage] = Registry("advantage")

REWARD_NEEDS = {
    "rewards": "reward-based advantages need one reward per row",
    "group_ids": "group baselines need the prompt id of each row",
}


def group_statistics(values: Tensor, group_ids: Tensor, rows: Tensor) -> tuple[Tensor, ...]:
    """Per-row (group sum, group count, group mean, unbiased group std) over the selected rows."""
    dtype = values.dtype
    selected = rows.to(dtype)
    _, inverse = torch.unique(group_ids, return_inverse=True)
    num_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    zeros = values.new_zeros(num_groups)
    total = zeros.index_add(0, inverse, values * selected)
    count = zeros.index_add(0, inverse, selected)
    mean = total / count.clamp(min=1)
    squares = zeros.index_add(0, inverse, (values - mean[inverse]) ** 2 * selected)
    std = (squares / (count - 1).clamp(min=1)).sqrt()
    return total[inverse], count[inverse], mean[inverse], std[inverse]


def group_extremes(values: Tensor, group_ids: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """[R] each row's group (max, min) over the selected rows (±inf for a group with none)."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    num_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    inf = torch.tensor(float("inf"), dtype=values.dtype, device=values.device)
    top = inf.neg().expand(num_groups).scatter_reduce(0, inverse, values.where(rows, -inf), "amax")
    bottom = inf.expand(num_groups).scatter_reduce(0, inverse, values.where(rows, inf), "amin")
    return top[inverse], bottom[inverse]


def whiten(values: Tensor, mask: Tensor, eps: float = 1e-8, unbiased: bool = False) -> Tensor:
    """(x − mean) · rsqrt(var + eps) over the masked entries, 0 elsewhere; ``unbiased``: the
    variance over count − 1 (verl's ``masked_whiten``, GAE) instead of count (REINFORCE++)."""
    valid = mask.to(values.dtype)
    count = valid.sum()
    mean = (values * valid).sum() / count.clamp(min=1)
    divisor = (count - 1).clamp(min=1) if unbiased else count.clamp(min=1)
    var = ((values - mean) ** 2 * valid).sum() / divisor
    return (values - mean) * torch.rsqrt(var + eps) * valid


@ADVANTAGES.register("constant")
@dataclass(frozen=True)
class ConstantAdvantage(Advantage):
    """Â = value on every selected unit (SFT: 1)."""

    value: float = 1.0

    def __post_init__(self) -> None:
        check_number("ConstantAdvantage", "value", self.value)

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        return AdvantageResult(rows.to(batch.logprobs.dtype) * self.value)


@ADVANTAGES.register("fixed_baseline")
@dataclass(frozen=True)
class FixedBaseline(Advantage):
    """REINFORCE with a constant baseline: Â = R − c on every row (c = 0: the raw reward).
    TOPR shows c also sets which rows count as negative, hence the effective share of
    positive examples (Le Roux et al. 2025, §4)."""

    needs: ClassVar[dict[str, str]] = {"rewards": "Â = R − c reads each row's reward"}
    baseline: float = 0.0
    """c, subtracted from every reward."""

    def __post_init__(self) -> None:
        check_number("FixedBaseline", "baseline", self.baseline)

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        assert batch.rewards is not None
        rewards = batch.rewards.to(batch.logprobs.dtype)
        return AdvantageResult((rewards - self.baseline) * rows.to(rewards.dtype))


@ADVANTAGES.register("remax")
@dataclass(frozen=True)
class GreedyBaseline(Advantage):
    """ReMax: Â = R − R_greedy, the baseline the reward of the prompt's greedy completion
    (``batch.baseline_rewards``: online, the collector samples and scores one per prompt)."""

    needs: ClassVar[dict[str, str]] = {
        "rewards": "Â = R − R_greedy reads each row's reward",
        "baseline_rewards": "ReMax's baseline is the reward of the prompt's greedy completion",
    }

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        assert batch.rewards is not None and batch.baseline_rewards is not None
        rewards = batch.rewards.to(batch.logprobs.dtype)
        baseline = batch.baseline_rewards.to(rewards.dtype)
        return AdvantageResult((rewards - baseline) * rows.to(rewards.dtype))


@ADVANTAGES.register("given")
@dataclass(frozen=True)
class GivenAdvantage(Advantage):
    """Â = ``batch.advantages`` as computed elsewhere (e.g. GAE from your own critic)."""

    needs: ClassVar[dict[str, str]] = {"advantages": "the 'given' advantage reads them as is"}

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        assert batch.advantages is not None
        values = batch.advantages.detach()
        keep = rows.to(values.dtype)
        return AdvantageResult(values * (keep if values.dim() == 1 else keep.unsqueeze(-1)))


@ADVANTAGES.register("grpo")
@dataclass(frozen=True)
class GroupNormalized(Advantage):
    """GRPO: (R − mean_group) / (std_group + ε); with ``std=False`` it is Dr. GRPO's R − mean,
    with ``std_over="batch"`` Lite PPO's (R − mean_group) / (std_batch + ε)."""

    needs: ClassVar[dict[str, str]] = REWARD_NEEDS
    std: bool = True
    """Divide by an unbiased standard deviation of the rewards (False: Dr. GRPO / HPT code)."""
    eps: float = 1e-6
    singleton: Literal["zero", "raw"] = "zero"
    """A group of one row: 'zero' advantage, or 'raw' = verl's mean 0 / std 1 (Â ≈ R)."""
    std_over: Literal["group", "batch"] = "group"
    """Whose standard deviation: the row's group's (GRPO), or every row's of the batch (Lite
    PPO, TRL's ``scale_rewards="batch"``): online, the whole rollout batch, however many
    mini-batches it is split into (TRL's generation batch)."""

    def __post_init__(self) -> None:
        check_number("GroupNormalized", "eps", self.eps, ge=0)
        check_choice("GroupNormalized", "singleton", self.singleton, ("zero", "raw"))
        check_choice("GroupNormalized", "std_over", self.std_over, ("group", "batch"))

    def min_group_rows(self) -> int:
        return 2 if self.singleton == "zero" else 1

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        assert batch.rewards is not None and batch.group_ids is not None
        rewards = batch.rewards.to(batch.logprobs.dtype)
        _, count, mean, std = group_statistics(rewards, batch.group_ids, rows)
        alone = count <= 1
        mean = mean.where(~alone, mean.new_zeros(()))
        std = std.where(~alone, std.new_ones(()))
        adv = rewards - mean
        if self.std and self.std_over == "batch":
            everyone = torch.zeros_like(batch.group_ids)  # one group: the whole batch
            adv = adv / (group_statistics(rewards, everyone, rows)[3] + self.eps)
        elif self.std:
            adv = adv / (std + self.eps)
        if self.singleton == "zero":
            adv = adv.where(~alone, adv.new_zeros(()))
        return AdvantageResult(adv * rows.to(adv.dtype))


@ADVANTAGES.register("rloo")
@dataclass(frozen=True)
class LeaveOneOut(Advantage):
    """RLOO: R_i − mean of the other rows' rewards in its group (a group of one gets 0); with
    ``kl_coef`` the reward first pays β·Σ_t (ℓ_old,t − ℓ_ref,t), the sequence's k1 KL to π_ref
    (Ahmadian et al. 2024; TRL's RLOOTrainer)."""

    needs: ClassVar[dict[str, str]] = REWARD_NEEDS
    metric_weights: ClassVar[Literal["pair", "summed", "unit"]] = "unit"
    kl_coef: float = 0.0
    """β of the KL penalty in the reward; 0: none."""
    normalize: bool = False
    """Whiten the advantages over the term's rows of the batch, (A − mean)/(std + 1e-4) with
    the unbiased std (TRL's ``normalize_advantages``); online over the whole rollout batch
    (TRL's generation batch)."""

    def __post_init__(self) -> None:
        check_number("LeaveOneOut", "kl_coef", self.kl_coef, ge=0, why="a negative β rewards drift")

    def requirements(self) -> dict[str, str]:
        if not self.kl_coef:
            return dict(self.needs)
        why = "RLOO's KL penalty in the reward compares π_old with the reference policy"
        return dict(self.needs) | {"old_logprobs": why, "ref_logprobs": why}

    def min_group_rows(self) -> int:
        return 2

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        assert batch.rewards is not None and batch.group_ids is not None
        rewards = batch.rewards.to(batch.logprobs.dtype)
        kl = None
        if self.kl_coef:
            assert batch.old_logprobs is not None and batch.ref_logprobs is not None
            kl = ((batch.old_logprobs - batch.ref_logprobs).detach() * batch.mask).sum(-1)
            rewards = rewards - self.kl_coef * kl.to(rewards.dtype)
        total, count, _, _ = group_statistics(rewards, batch.group_ids, rows)
        others = (total - rewards) / (count - 1).clamp(min=1)
        adv = (rewards - others).where(count > 1, rewards.new_zeros(()))
        selected = rows.to(adv.dtype)
        if self.normalize:  # one group: the whole batch
            everyone = torch.zeros_like(batch.group_ids)
            _, _, mean, std = group_statistics(adv, everyone, rows)
            adv = (adv - mean) / (std + 1e-4)
        result = AdvantageResult(adv * selected)
        if kl is not None:  # `reward_kl`: the sequence KL the reward was charged
            result.row_metrics["reward_kl"] = kl * selected
        return result


@ADVANTAGES.register("reinforce_pp")
@dataclass(frozen=True)
class BatchNormalized(Advantage):
    """REINFORCE++: the reward broadcast to tokens, whitened over all valid tokens of the batch."""

    needs: ClassVar[dict[str, str]] = {"rewards": "REINFORCE++ whitens the rows' rewards"}
    group_baseline: bool = False
    """Subtract the group mean first (REINFORCE++-baseline); needs ``group_ids``."""
    eps: float = 1e-8

    def requirements(self) -> dict[str, str]:
        return REWARD_NEEDS if self.group_baseline else dict(self.needs)

    def min_group_rows(self) -> int:
        return 2 if self.group_baseline else 1

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        assert batch.rewards is not None
        rewards = batch.rewards.to(batch.logprobs.dtype)
        if self.group_baseline:
            assert batch.group_ids is not None
            rewards = rewards - group_statistics(rewards, batch.group_ids, rows)[2]
        valid = batch.mask * rows.to(batch.mask.dtype).unsqueeze(-1)
        tokens = rewards.unsqueeze(-1) * valid
        return AdvantageResult(whiten(tokens, valid, self.eps))
