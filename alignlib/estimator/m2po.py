"""M2PO's trust region (Zheng et al. 2025, "Prosperity before Collapse: How Far Can Off-Policy
RL Reach with Stale Data on LLMs?", arXiv 2510.01161), as the paper states it and as its
released code computes it; both read the present policy π_θ against the one that sampled.

The paper bounds the second moment M̂₂ = mean_t (log π_θ(y_t) − log π_behaviour(y_t))² of the
batch: the tokens with the largest squared log-ratio are masked until M̂₂ ≤ τ (here < τ: they
differ at an exact tie only), the rest train by the unclipped ratio (:class:`M2POMask`). The
released code (Infini-AI-Lab/M2PO, ``compute_m2po_policy_loss``) instead turns the budget into
one PPO clip bound per batch (:class:`M2POClip`): over the "harmful" tokens only (Â > 0 with
ρ > 1, Â < 0 with ρ < 1), τ² is the largest squared log-ratio at which capping every harmful
one keeps their mean under the budget, and the loss is PPO's with ε_low = 1 − e^{−τ},
ε_high = e^τ − 1.

Both references compute their statistic per micro-batch; ``scope="global"`` (the default)
computes it once over the optimizer mini-batch from a no-grad pass of the present policy, so
the gradient does not depend on the micro-batch split; ``scope="per_microbatch"`` reproduces
the references. AReaL's form (π_old against the engine, once per step, dropped tokens out of
the normalizers) is :class:`SecondMomentMask`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from alignlib.estimator.batch import Batch
from alignlib.estimator.masks import MASKS, Mask, UnitTerms, clipped_surrogate
from alignlib.estimator.off_policy_masks import drop_tokens, gap_to_behaviour, second_moment_keep
from alignlib.estimator.references import log_ratio
from alignlib.estimator.registry import check_choice, check_number
from alignlib.estimator.units import Units

Scope = Literal["global", "per_microbatch"]
SCOPES = ("global", "per_microbatch")
NEAR = 1e-12
"""The released code's margin around 0 (advantages) and 1 (ratios) when it picks harmful
tokens."""


def rowwise(value: Tensor, rows: int) -> Tensor:
    """A mini-batch scalar as an [R] tensor, so ``prepare`` can hand it to every micro-batch."""
    return value.reshape(1).expand(rows).clone()


@MASKS.register("m2po")
@dataclass(frozen=True)
class M2POMask(Mask):
    """The paper's mask M_{i,t}: over the batch, the tokens with the largest
    (log π_θ − log π_behaviour)² pass no gradient until the mean over the rest is below τ
    (all but the smallest at worst; ties drop the lower flat index first). Masked tokens keep
    their place in the normalizers (the objective's 1/Σ|o_i|)."""

    needs: ClassVar[dict[str, str]] = {
        "old_logprobs": "M2PO compares the present policy with the one that sampled"
    }
    token_level: ClassVar[bool] = True
    reads_behaviour: ClassVar[bool] = True
    threshold: float = 0.04
    """τ_M2, the largest mean squared log-ratio left (the paper's and AReaL's 0.04)."""
    scope: Scope = "global"

    def __post_init__(self) -> None:
        check_number("M2POMask", "threshold", self.threshold, gt=0, why="a mean square")
        check_choice("M2POMask", "scope", self.scope, SCOPES)

    @property
    def reads_present_in_prepare(self) -> bool:  # type: ignore[override]
        return self.scope == "global"

    def keep(self, units: Units) -> Tensor:
        """[R, U] bool: the tokens that still train."""
        gap = gap_to_behaviour(units.logp, units)
        return second_moment_keep(gap**2, units.mask > 0, self.threshold)

    def prepare(self, batch: Batch, units: Units, adv: Tensor) -> dict[str, Tensor]:
        return {"keep": self.keep(units)} if self.scope == "global" else {}

    def apply(self, units: Units, adv: Tensor, terms: UnitTerms, prepared: dict) -> UnitTerms:
        return drop_tokens(
            units, terms, prepared["keep"] if self.scope == "global" else self.keep(units)
        )


def harmful_second_moment(gap: Tensor, adv: Tensor, valid: Tensor) -> Tensor:
    """[N] the squared log-ratios of the harmful tokens: Â > 0 with ρ > 1, Â < 0 with ρ < 1."""
    ratio = gap.exp()
    harmful = ((adv > NEAR) & (ratio > 1 + NEAR)) | ((adv < -NEAR) & (ratio < 1 - NEAR))
    return gap[harmful & valid].double() ** 2


def budget_bound(squares: Tensor, budget: float) -> Tensor:
    """τ (float64 scalar): ∞ when the mean of ``squares`` is within ``budget``; else √v for the
    largest v among them such that Σ min(s, v) < budget·N, 0 when none is (the released code's
    breakpoint rule: it caps at a value present in the batch, not between two)."""
    n = squares.numel()
    if not n or float(squares.mean()) <= budget:
        return torch.tensor(math.inf, dtype=torch.float64, device=squares.device)
    ordered = squares.sort().values
    later = torch.arange(n - 1, -1, -1, device=squares.device, dtype=ordered.dtype)
    capped_sums = ordered.cumsum(0) + ordered * later  # Σ min(s, ordered[k]) for each k
    first_over = int((capped_sums >= budget * n).nonzero()[0])
    if first_over == 0:
        return torch.zeros((), dtype=torch.float64, device=squares.device)
    return ordered[first_over - 1].sqrt()


@MASKS.register("m2po_clip")
@dataclass(frozen=True)
class M2POClip(Mask):
    """The released code's M2PO: PPO's clipped loss −min(ρÂ, clip(ρ, e^{−τ}, e^{τ})Â) with τ set
    per batch by :func:`budget_bound` from the harmful tokens' log(π_θ/π_old)², optionally
    widened to at least ``min_eps_low`` / ``min_eps_high`` (its ``miniclip_low`` /
    ``miniclip_high``; off in its scripts). Within the budget nothing is clipped."""

    needs: ClassVar[dict[str, str]] = {"old_logprobs": "M2PO's clip bounds the ratio π/π_old"}
    token_level: ClassVar[bool] = True
    budget: float = 0.04
    """The largest mean squared log-ratio of the harmful tokens (its scripts' ``M2_budget``)."""
    min_eps_low: float | None = None
    min_eps_high: float | None = None
    scope: Scope = "global"

    def __post_init__(self) -> None:
        check_number("M2POClip", "budget", self.budget, gt=0, why="a mean square")
        check_number("M2POClip", "min_eps_low", self.min_eps_low, ge=0, le=1, optional=True)
        check_number("M2POClip", "min_eps_high", self.min_eps_high, ge=0, optional=True)
        check_choice("M2POClip", "scope", self.scope, SCOPES)

    @property
    def reads_present_in_prepare(self) -> bool:  # type: ignore[override]
        return self.scope == "global"

    def bounds(self, units: Units, adv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(lowest ratio, highest ratio, harmful second moment) for this batch: float64 scalars."""
        assert units.old is not None
        gap = units.logp.detach().double() - units.old.detach().double()
        squares = harmful_second_moment(gap, adv.detach(), units.mask > 0)
        tau = budget_bound(squares, self.budget)
        eps_low, eps_high = 1 - torch.exp(-tau), torch.expm1(tau)
        if self.min_eps_low is not None:
            eps_low = eps_low.clamp(min=self.min_eps_low)
        if self.min_eps_high is not None:
            eps_high = eps_high.clamp(min=self.min_eps_high)
        m2 = squares.mean() if squares.numel() else squares.new_zeros(())
        return 1 - eps_low, 1 + eps_high, m2

    def prepare(self, batch: Batch, units: Units, adv: Tensor) -> dict[str, Tensor]:
        if self.scope != "global":
            return {}
        low, high, m2 = self.bounds(units, adv)
        rows = units.mask.shape[0]
        return {"low": rowwise(low, rows), "high": rowwise(high, rows), "m2": rowwise(m2, rows)}

    def apply(self, units: Units, adv: Tensor, terms: UnitTerms, prepared: dict) -> UnitTerms:
        if self.scope == "global":
            low, high, m2 = (prepared[key][:, None] for key in ("low", "high", "m2"))
        else:
            low, high, m2 = self.bounds(units, adv)
        ratio = log_ratio(units, None).detach().exp()
        value, strict = clipped_surrogate(ratio, adv, low.to(ratio), high.to(ratio))
        terms.weight = terms.weight * (~strict).to(terms.weight.dtype)
        terms.value = value * units.mask
        terms.indicators["clipfrac"] = strict.to(ratio.dtype)
        terms.indicators["m2po_m2"] = m2.to(ratio) * torch.ones_like(ratio)
        terms.indicators["ppo_kl"] = -log_ratio(units, None).detach()
        return terms
