"""Importance-ratio weights that replace PPO's hard clip: CISPO's clipped IS weight, SAPO's
soft gate and VESPO's gamma kernel. All are masks in the UPGE sense: a detached per-unit factor
on Â·∇s.

clipped_is  (CISPO, reference ``current``):  loss −sg[clip(ρ, 1−ε_low, 1+ε_high)]·Â·ℓ_t
sapo_gate   (SAPO, reference ``old``):       loss −f(ρ)·Â,  f(x) = σ(τ(x − 1))·4/τ,
            gradient −f'(ρ)·Â·∇ρ with f'(x) = 4σ(τ(x − 1))(1 − σ(τ(x − 1))), τ = τ_pos if Â > 0
gamma_is    (VESPO, reference ``current``):  loss −sg[φ(w)]·Â·ℓ_t, w = Π_t ρ_t the row's
            sequence ratio, φ(w) = e^λ·w^k·e^(−λw) (φ(1) = 1), (k, λ) by the sign of Â
geo_mean_clip (GMPO, reference ``current``): loss −s·Â per row, s = exp(mean_t c_t) the
            geometric mean of the token ratios clipped one-sidedly in log space; gradient
            −s·Â·∇ℓ_t/|y| on every token whose log-ratio the clip leaves alone
tapered_is  (TOPR, reference ``current``):   loss −α·Â·ℓ_t, α = 1 on rows with Â ≥ 0 and
            sg[clip(π/π_old, 0, 1)] (the row's sequence ratio, or each token's) on Â < 0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from alignlib.estimator.masks import MASKS, Mask, UnitTerms
from alignlib.estimator.references import log_ratio
from alignlib.estimator.registry import check_choice, check_number
from alignlib.estimator.units import Units


def _ratio(units: Units, clamp: float | None) -> Tensor:
    """[R, U] detached ρ = π/π_old per unit (log ρ clamped first, as verl does)."""
    return log_ratio(units, clamp).detach().exp()


@MASKS.register("clipped_is")
@dataclass(frozen=True)
class ClippedISWeight(Mask):
    """CISPO (MiniMax-M1 §3.1): every unit keeps its gradient, weighted by the stop-gradient
    clipped ratio sg[clip(ρ, 1 − ε_low, 1 + ε_high)]; use it with the ``current`` reference so
    the score is ℓ and the loss value −clip(ρ)·Â·ℓ (as verl and TRL report it)."""

    needs: ClassVar[dict[str, str]] = {"old_logprobs": "the IS weight π/π_old needs them"}
    eps_low: float | None = None
    """Floor 1 − ε_low; None: no floor (MiniMax sets ε_low large; verl's example uses 10)."""
    eps_high: float = 0.2
    """Cap 1 + ε_high (TRL's ``epsilon_high`` is the absolute cap, i.e. 1 + ε_high here)."""
    clamp: float | None = 20.0

    def __post_init__(self) -> None:
        check_number("ClippedISWeight", "eps_low", self.eps_low, ge=0, optional=True)
        check_number("ClippedISWeight", "eps_high", self.eps_high, ge=0)
        check_number("ClippedISWeight", "clamp", self.clamp, gt=0, optional=True)

    def apply(self, units: Units, adv: Tensor, terms: UnitTerms, prepared: dict) -> UnitTerms:
        ratio = _ratio(units, self.clamp)
        low = None if self.eps_low is None else 1 - self.eps_low
        weight = ratio.clamp(min=low, max=1 + self.eps_high)
        terms.weight = terms.weight * weight
        terms.value = terms.value * weight
        terms.indicators["clipfrac"] = (weight != ratio).to(ratio.dtype)
        assert units.old is not None
        terms.indicators["ppo_kl"] = (units.old - units.logp).detach()
        return terms


@MASKS.register("sapo_gate")
@dataclass(frozen=True)
class SoftGate(Mask):
    """SAPO (Gao et al. 2025): the soft sigmoid gate f(ρ) = σ(τ(ρ − 1))·4/τ in place of the
    hard clip; use it with the ``old`` reference (score ρ). f(1) = 2/τ and f'(1) = 1, so at ρ = 1
    the gradient is the plain policy gradient; it decays smoothly as ρ leaves 1."""

    needs: ClassVar[dict[str, str]] = {"old_logprobs": "the SAPO gate reads π/π_old"}
    tau_pos: float = 1.0
    """Temperature τ for Â > 0."""
    tau_neg: float = 1.05
    """Temperature τ for Â ≤ 0 (faster decay of negative-advantage updates)."""
    clamp: float | None = 20.0

    def __post_init__(self) -> None:
        check_number("SoftGate", "tau_pos", self.tau_pos, gt=0)
        check_number("SoftGate", "tau_neg", self.tau_neg, gt=0)
        check_number("SoftGate", "clamp", self.clamp, gt=0, optional=True)

    def apply(self, units: Units, adv: Tensor, terms: UnitTerms, prepared: dict) -> UnitTerms:
        ratio = _ratio(units, self.clamp)
        tau = torch.where(adv > 0, self.tau_pos, self.tau_neg).to(ratio.dtype)
        gate = torch.sigmoid(tau * (ratio - 1))
        terms.weight = terms.weight * 4 * gate * (1 - gate)
        terms.value = -adv * gate * 4 / tau * units.mask
        terms.indicators["gate_grad"] = 4 * gate * (1 - gate)
        assert units.old is not None
        terms.indicators["ppo_kl"] = (units.old - units.logp).detach()
        return terms


LOG_W_FLOOR = math.log(1e-8)
"""Lower bound on log w (VESPO's reference code floors w at 1e-8, TRL likewise)."""


def sequence_log_weight(units: Units) -> Tensor:
    """[R, 1] log w = Σ_t log π_θ/π_old over each row's valid units, each log-ratio clamped at
    ±20, plus Σ_t log π_old/π_engine when the batch has the engine's log-probs (the reference
    code adds its rollout-correction weights the same way); the sum clamped to [log 1e-8, 20].
    No gradient."""
    assert units.old is not None
    mask = units.mask
    total = ((units.logp.detach() - units.old).clamp(-20.0, 20.0) * mask).sum(-1)
    if units.behaviour is not None:
        total = total + ((units.old - units.behaviour).clamp(-20.0, 20.0) * mask).sum(-1)
    return total.clamp(LOG_W_FLOOR, 20.0).unsqueeze(-1)


@MASKS.register("gamma_is")
@dataclass(frozen=True)
class GammaWeight(Mask):
    """VESPO (Shen et al. 2026, arXiv 2602.10693): each sampled row's tokens weighted by
    sg[φ(w)], φ(w) = e^λ·w^k·e^(−λw) of the row's sequence importance weight w (a product of
    token ratios, not their geometric mean), k and λ chosen by the sign of Â (Â ≥ 0: k_pos,
    λ_pos); use it with the ``current`` reference (loss −φ(w)·Â·ℓ_t, as the reference code and
    TRL report it). φ(1) = 1 and φ → 0 as w → 0 or ∞: no hard clip, and no token left
    without gradient inside a kept sequence."""

    needs: ClassVar[dict[str, str]] = {"old_logprobs": "VESPO's weight is π_θ/π_old per row"}
    reads_behaviour: ClassVar[bool] = True
    folds_behaviour: ClassVar[bool] = True
    k_pos: float = 2.0
    """Power k for Â ≥ 0: how fast the weight falls as w → 0."""
    lambda_pos: float = 3.0
    """Decay λ for Â ≥ 0: how fast the weight falls as w grows."""
    k_neg: float = 3.0
    lambda_neg: float = 2.0

    def __post_init__(self) -> None:
        for key in ("k_pos", "lambda_pos", "k_neg", "lambda_neg"):
            check_number("GammaWeight", key, getattr(self, key), ge=0)

    def apply(self, units: Units, adv: Tensor, terms: UnitTerms, prepared: dict) -> UnitTerms:
        log_w = sequence_log_weight(units)
        nonnegative = adv.detach() >= 0
        k = torch.where(nonnegative, self.k_pos, self.k_neg).to(log_w.dtype)
        lam = torch.where(nonnegative, self.lambda_pos, self.lambda_neg).clamp(min=1e-4)
        lam = lam.to(log_w.dtype)
        phi = torch.exp(lam + k * log_w - lam * log_w.exp()).nan_to_num(0.0, 0.0, 0.0)
        terms.weight = terms.weight * phi
        terms.value = terms.value * phi
        terms.indicators["phi"] = phi.expand_as(terms.weight)
        terms.indicators["log_w"] = log_w.expand_as(terms.weight)
        return terms


@MASKS.register("geo_mean_clip")
@dataclass(frozen=True)
class GeometricMeanClip(Mask):
    """GMPO (Zhao et al. 2025, "Geometric-Mean Policy Optimization", arXiv 2507.20673): a row's
    importance weight is the geometric mean of its token ratios, each clipped first in log
    space and one-sidedly by the sign of Â (PPO's trust region: c_t = min(δ_t, ε_high) for
    Â > 0, max(δ_t, −ε_low) otherwise, δ_t = ℓ_t − ℓ_old,t), s = exp(mean_t c_t). The loss is
    −s·Â per row, so with the ``current`` reference every token whose log-ratio is unclipped
    gets the detached weight s (its gradient is −s·Â·∇ℓ_t/|y| under seq-mean-token-mean) and
    a clipped one none. As verl's ``geo_mean`` loss and TRL's GMPOTrainer."""

    needs: ClassVar[dict[str, str]] = {"old_logprobs": "GMPO's ratios are π_θ/π_old per token"}
    token_level: ClassVar[bool] = True
    eps_low: float = 0.4
    """Lower clip on the token log-ratio (ratio floor e^−ε_low); the paper's 0.4."""
    eps_high: float = 0.4
    """Upper clip on the token log-ratio (ratio cap e^ε_high); the paper's 0.4."""

    def __post_init__(self) -> None:
        check_number("GeometricMeanClip", "eps_low", self.eps_low, ge=0)
        check_number("GeometricMeanClip", "eps_high", self.eps_high, ge=0)

    def apply(self, units: Units, adv: Tensor, terms: UnitTerms, prepared: dict) -> UnitTerms:
        assert units.old is not None
        delta = units.logp.detach() - units.old
        positive = adv.detach() > 0
        clipped = torch.where(positive, delta > self.eps_high, delta < -self.eps_low)
        bounded = torch.where(
            positive, delta.clamp(max=self.eps_high), delta.clamp(min=-self.eps_low)
        )
        mask = units.mask
        mean = (bounded * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
        ratio = mean.exp()
        terms.weight = terms.weight * ratio * (~clipped).to(ratio.dtype)
        terms.value = -adv * ratio * mask
        terms.indicators["clipfrac"] = clipped.to(ratio.dtype)
        terms.indicators["geo_ratio"] = ratio.expand_as(terms.weight)
        terms.indicators["ppo_kl"] = -delta
        return terms


@MASKS.register("tapered_is")
@dataclass(frozen=True)
class TaperedISWeight(Mask):
    """TOPR (Le Roux et al. 2025, "Tapered Off-Policy REINFORCE", arXiv 2503.14286, eq. 8):
    rows with Â ≥ 0 keep the plain REINFORCE (SFT-like) gradient, weight 1; rows with Â < 0
    get the truncated importance weight sg[clip(π/μ, 0, 1)], so a wrong answer's push down
    fades once the policy has made it unlikely. Use it with the ``current`` reference (loss
    −α·Â·ℓ_t). ``level="sequence"`` (the paper): π/μ = Π_t ρ_t of the whole row;
    ``"token"`` (ROLL's and Trinity-RFT's code): each token's own ρ_t."""

    needs: ClassVar[dict[str, str]] = {"old_logprobs": "TOPR's weight is π/π_old on negatives"}
    level: Literal["sequence", "token"] = "sequence"
    """Whose ratio tapers a negative row: the whole sequence's (paper) or each token's."""
    positive_weight: float = 1.0
    """Factor on rows with Â ≥ 0 (ROLL's ``topr_positive_weight``)."""
    negative_weight: float = 1.0
    """Factor on rows with Â < 0, times the truncated ratio (ROLL's ``topr_negative_weight``)."""

    def __post_init__(self) -> None:
        check_choice("TaperedISWeight", "level", self.level, ("sequence", "token"))
        check_number("TaperedISWeight", "positive_weight", self.positive_weight, ge=0)
        check_number("TaperedISWeight", "negative_weight", self.negative_weight, ge=0)

    def apply(self, units: Units, adv: Tensor, terms: UnitTerms, prepared: dict) -> UnitTerms:
        assert units.old is not None
        delta = (units.logp.detach() - units.old).clamp(-20.0, 20.0)
        if self.level == "sequence":
            delta = (delta * units.mask).sum(-1, keepdim=True).expand_as(delta)
        # clip(ρ, 0, 1) = exp(min(log ρ, 0)): never overflows, however long the row
        truncated = delta.clamp(max=0.0).exp()
        negative = adv.detach() < 0
        factor = torch.where(
            negative, self.negative_weight * truncated, truncated.new_full((), self.positive_weight)
        )
        terms.weight = terms.weight * factor
        terms.value = terms.value * factor
        terms.indicators["tapered"] = (negative & (delta < 0)).to(factor.dtype)
        terms.indicators["ppo_kl"] = units.old - units.logp.detach()
        return terms
