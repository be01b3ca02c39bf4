"""Stabilization masks: which units may pass gradient, and row filters that shrink the batch.

A mask edits a :class:`UnitTerms` in place of the default −Â·s: ``weight`` is the stop-gradient
mask multiplying Â·∇s, ``value`` the per-unit loss value reported as the method's loss, and
``penalty`` an extra differentiable per-unit loss (KL-Cov). Masks that need mini-batch-wide
statistics compute them in ``prepare`` (once, before any micro-batch split).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from alignlib.estimator.advantages import group_extremes, group_statistics
from alignlib.estimator.batch import Batch, Role
from alignlib.estimator.references import log_ratio
from alignlib.estimator.registry import Registry, check_number
from alignlib.estimator.units import Units


@dataclass
class UnitTerms:
    weight: Tensor
    """[R, U] stop-gradient mask on Â·∇s (starts as the unit mask)."""
    value: Tensor
    """[R, U] detached loss value per unit (starts as −Â·s)."""
    penalty: Tensor | None = None
    """[R, U] extra differentiable loss per unit, or None."""
    indicators: dict[str, Tensor] = field(default_factory=dict)
    """[R, U] per-unit statistics, averaged over the term's valid units into metrics."""


class Mask(ABC):  # noqa: B024  (every method has a working default)
    """A stabilization mask. The completion mask is always applied; masks narrow it further."""

    needs: ClassVar[dict[str, str]] = {}
    token_level: ClassVar[bool] = False
    """True for a mask that selects single tokens: it refuses a term whose units are whole
    sequences."""
    reads_behaviour: ClassVar[bool] = False
    """True for a mask that reads the sampling engine's log-probs when the batch has them
    (``Units.behaviour``): the online trainer then provides them."""
    folds_behaviour: ClassVar[bool] = False
    """True for a mask whose weight already includes the engine/trainer ratio (VESPO): a
    rollout correction on top would count it twice, so it is refused."""
    reads_present_in_prepare: ClassVar[bool] = False
    """True for a mask whose ``prepare`` reads the present policy (``units.logp``, the
    entropy: Clip-Cov / KL-Cov / forking-token selection): a trainer fills them by a no-grad
    pass before each mini-batch is prepared."""
    reads_old_in_prepare: ClassVar[bool] = False
    """True for a mask whose ``prepare`` reads π_old (``units.old``): the trainer then takes it
    from a no-grad pass before the update, not from the update's own forward."""

    def prepare(self, batch: Batch, units: Units, adv: Tensor) -> dict[str, Tensor]:
        """Per-row tensors computed over the whole mini-batch (default: nothing)."""
        return {}

    def apply(self, units: Units, adv: Tensor, terms: UnitTerms, prepared: dict) -> UnitTerms:
        """Edit ``terms`` for one (micro-)batch; ``adv`` is [R, U], ``prepared`` this mask's."""
        return terms

    def counted(self, prepared: dict[str, Tensor]) -> Tensor | None:
        """[R, T] the tokens that still count in the term's normalizers, from what ``prepare``
        returned, when this mask narrows them (the high-entropy mask's kept tokens); None: it
        zeroes losses without touching any denominator (default)."""
        return None

    def requirements(self) -> dict[str, str]:
        return dict(self.needs)


class RowFilter(Mask):
    """Removes whole rows from the mini-batch: they count in no loss and no denominator."""

    needs: ClassVar[dict[str, str]] = {
        "rewards": "row filters look at each group's rewards",
        "group_ids": "row filters act on whole groups",
    }

    @abstractmethod
    def keep(self, batch: Batch, rows: Tensor) -> Tensor:
        """[R] bool: rows (among ``rows``) that stay in the batch."""


MASKS: Registry[Mask] = Registry("mask")


@MASKS.register("completion")
@dataclass(frozen=True)
class CompletionMask(Mask):
    """Only completion tokens pass gradient (always on; listed for completeness)."""


def clipped_surrogate(
    ratio: Tensor, adv: Tensor, low: float | Tensor, high: float | Tensor
) -> tuple[Tensor, Tensor]:
    """(PPO's per-unit loss max(−Âρ, −Â·clip(ρ, low, high)), where the clipped term is strictly
    greater: no gradient there); ``low`` / ``high`` floats or tensors broadcasting to ρ."""
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(low, high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


@MASKS.register("ppo_clip")
@dataclass(frozen=True)
class PPOClip(Mask):
    """PPO's trust region: loss −min(ρÂ, clip(ρ, 1−ε_low, 1+ε_high)Â), dual-clipped at −cÂ for Â<0.

    A unit passes gradient unless the clipped term is strictly greater (or the dual clip binds).
    """

    needs: ClassVar[dict[str, str]] = {"old_logprobs": "the PPO ratio needs behaviour log-probs"}
    eps_low: float = 0.2
    eps_high: float = 0.2
    """Upper clip ε (DAPO's clip-higher uses 0.28)."""
    dual_clip: float | None = None
    """Dual-clip constant c (> 1) for negative advantages; None disables it."""
    clamp: float | None = 20.0
    """Clamp on log ρ before exp, as verl does."""

    def __post_init__(self) -> None:
        check_number("PPOClip", "eps_low", self.eps_low, ge=0, le=1, why="the ratio floor is 1 − ε")
        check_number("PPOClip", "eps_high", self.eps_high, ge=0, why="the ratio cap is 1 + ε")
        check_number("PPOClip", "dual_clip", self.dual_clip, gt=1, optional=True)
        check_number("PPOClip", "clamp", self.clamp, gt=0, optional=True)

    def clip(self, units: Units, adv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(per-unit loss value, strictly clipped, dual-clipped), all detached."""
        ratio = log_ratio(units, self.clamp).detach().exp()
        value, strict = clipped_surrogate(ratio, adv, 1 - self.eps_low, 1 + self.eps_high)
        dual = torch.zeros_like(strict)
        if self.dual_clip is not None:
            bound = -adv * self.dual_clip
            dual = (adv < 0) & (bound < value)
            value = torch.where(dual, bound, value)
        return value, strict, dual

    def apply(self, units: Units, adv: Tensor, terms: UnitTerms, prepared: dict) -> UnitTerms:
        value, strict, dual = self.clip(units, adv)
        passes = (~strict & ~dual).to(terms.weight.dtype)
        terms.weight = terms.weight * passes
        terms.value = value * units.mask
        terms.indicators["clipfrac"] = strict.to(value.dtype)
        if self.dual_clip is not None:
            terms.indicators["clipfrac_lower"] = dual.to(value.dtype)
        assert units.old is not None
        terms.indicators["ppo_kl"] = (units.old - units.logp).detach()
        return terms


@MASKS.register("group_filter")
@dataclass(frozen=True)
class GroupFilter(RowFilter):
    """Dynamic sampling (DAPO): drop groups whose rewards are all equal (zero GRPO signal)."""

    tolerance: float = 0.0
    """Rewards within this distance of each other count as equal."""

    def __post_init__(self) -> None:
        check_number("GroupFilter", "tolerance", self.tolerance, ge=0)

    def keep(self, batch: Batch, rows: Tensor) -> Tensor:
        assert batch.rewards is not None and batch.group_ids is not None
        rewards = batch.rewards.to(batch.logprobs.dtype)
        top, bottom = group_extremes(rewards, batch.group_ids, rows)
        return rows & ((top - bottom) > self.tolerance)


@MASKS.register("reward_filter")
@dataclass(frozen=True)
class RewardFilter(RowFilter):
    """Rejection sampling (RAFT): keep only the rows whose reward exceeds ``threshold``; the
    others leave the batch, every loss and every denominator, as if never sampled."""

    needs: ClassVar[dict[str, str]] = {"rewards": "the reward filter reads each row's reward"}
    threshold: float = 0.0
    """A row stays when its reward is above this (0: the positively rewarded ones)."""

    def __post_init__(self) -> None:
        check_number("RewardFilter", "threshold", self.threshold)

    def keep(self, batch: Batch, rows: Tensor) -> Tensor:
        assert batch.rewards is not None
        return rows & (batch.rewards > self.threshold)


@MASKS.register("difficulty_band")
@dataclass(frozen=True)
class DifficultyBand(RowFilter):
    """Online difficulty filtering: keep prompts whose pass rate lies in [low, high]."""

    low: float = 0.0
    high: float = 1.0
    success_threshold: float = 0.5
    """A row counts as solved when its reward exceeds this."""

    def __post_init__(self) -> None:
        check_number("DifficultyBand", "low", self.low, ge=0, le=1, why="a pass rate")
        check_number("DifficultyBand", "high", self.high, ge=self.low, le=1, why="low ≤ high ≤ 1")
        check_number("DifficultyBand", "success_threshold", self.success_threshold)

    def keep(self, batch: Batch, rows: Tensor) -> Tensor:
        assert batch.rewards is not None and batch.group_ids is not None
        solved = (batch.rewards > self.success_threshold).to(batch.logprobs.dtype)
        pass_rate = group_statistics(solved, batch.group_ids, rows)[2]
        return rows & (pass_rate >= self.low) & (pass_rate <= self.high)


@MASKS.register("per_role")
@dataclass(frozen=True)
class PerRoleMask(Mask):
    """A different mask per row role (LUFFY: PPO clip on samples, none on demonstrations)."""

    by_role: Mapping[Role, Mask] = field(default_factory=dict)

    def requirements(self) -> dict[str, str]:
        needs: dict[str, str] = {}
        for mask in self.by_role.values():
            needs |= mask.requirements()
        return needs

    def apply(self, units: Units, adv: Tensor, terms: UnitTerms, prepared: dict) -> UnitTerms:
        for role, mask in self.by_role.items():
            rows = (units.roles == int(role)).unsqueeze(-1)
            if not bool(rows.any()):
                continue
            base = UnitTerms(terms.weight, terms.value, terms.penalty)
            edited = mask.apply(units, adv, base, prepared)
            terms.weight = torch.where(rows, edited.weight, terms.weight)
            terms.value = torch.where(rows, edited.value, terms.value)
            if edited.penalty is not None:
                zero = edited.penalty.new_zeros(())
                extra = edited.penalty.where(rows, zero)
                terms.penalty = extra if terms.penalty is None else terms.penalty + extra
            for key, ind in edited.indicators.items():
                terms.indicators[key] = ind.where(rows, ind.new_zeros(()))
        return terms
