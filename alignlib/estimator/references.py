"""Reference denominators: the score s(u) whose gradient is (1/π_ref)·∇π for one unit.

current  → s = log π            ∇s = ∇π / π        (SFT, REINFORCE, DPO family)
old      → s = π / π_old        ∇s = ∇π / π_old    (PPO, GRPO importance ratio)
constant → s = π                ∇s = ∇π            (offline data with π_ref ≡ 1)
shaped   → s = π / (π + γ)      ∇s = γ/(π+γ)² ∇π   (LUFFY policy shaping)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from alignlib.estimator.batch import Role
from alignlib.estimator.registry import Registry, check_number
from alignlib.estimator.units import Units


class Reference(ABC):
    """Turns unit log-likelihoods into the differentiable score the surrogate multiplies by Â."""

    needs: ClassVar[dict[str, str]] = {}

    @abstractmethod
    def score(self, units: Units) -> Tensor:
        """[R, U] score with gradient; value at invalid units is irrelevant but finite."""

    def requirements(self) -> dict[str, str]:
        return dict(self.needs)


REFERENCES: Registry[Reference] = Registry("reference")


@REFERENCES.register("current")
@dataclass(frozen=True)
class CurrentPolicy(Reference):
    """π_ref = π_θ: the score is log π, giving the score-function gradient ∇log π."""

    def score(self, units: Units) -> Tensor:
        return units.logp


def log_ratio(units: Units, clamp: float | None) -> Tensor:
    """log π − log π_old per unit, clamped to [−clamp, clamp] before any exp (as verl does)."""
    if units.old is None:
        raise ValueError("the importance ratio needs batch.old_logprobs")
    delta = units.logp - units.old
    return delta if clamp is None else delta.clamp(-clamp, clamp)


@REFERENCES.register("old")
@dataclass(frozen=True)
class OldPolicy(Reference):
    """π_ref = π_old (behaviour policy): the score is the importance ratio ρ = π/π_old."""

    needs: ClassVar[dict[str, str]] = {
        "old_logprobs": "the importance ratio π/π_old needs the behaviour policy's log-probs"
    }
    clamp: float | None = 20.0
    """Clamp log ρ to [−clamp, clamp] before exp (verl's vanilla loss); None disables it."""

    def score(self, units: Units) -> Tensor:
        return log_ratio(units, self.clamp).exp()


@REFERENCES.register("constant")
@dataclass(frozen=True)
class ConstantReference(Reference):
    """π_ref ≡ 1: the score is π itself (offline data under full-coverage assumptions, SRFT)."""

    def score(self, units: Units) -> Tensor:
        return units.logp.exp()


@REFERENCES.register("shaped")
@dataclass(frozen=True)
class ShapedReference(Reference):
    """LUFFY policy shaping f(π) = π/(π+γ): up-weights low-probability demonstration tokens."""

    gamma: float = 0.1
    """Shaping constant γ (LUFFY: 0.1)."""

    def __post_init__(self) -> None:
        check_number("ShapedReference", "gamma", self.gamma, gt=0)

    def score(self, units: Units) -> Tensor:
        prob = units.logp.exp()
        return prob / (prob + self.gamma)


@REFERENCES.register("per_role")
@dataclass(frozen=True)
class PerRole(Reference):
    """A different reference per row role (LUFFY: old for samples, shaped for demonstrations)."""

    by_role: Mapping[Role, Reference] = field(default_factory=dict)
    """Reference used for each role; roles not listed use ``default``."""
    default: Reference = field(default_factory=CurrentPolicy)

    def requirements(self) -> dict[str, str]:
        needs = self.default.requirements()
        for ref in self.by_role.values():
            needs |= ref.requirements()
        return needs

    def score(self, units: Units) -> Tensor:
        result = self.default.score(units)
        for role, ref in self.by_role.items():
            rows = (units.roles == int(role)).unsqueeze(-1)
            if bool(rows.any()):
                result = torch.where(rows, ref.score(units), result)
        return result
