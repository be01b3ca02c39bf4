"""DPPO's trust region (Qi et al. 2026, "Rethinking the Trust Region in LLM Reinforcement
Learning", arXiv 2602.04879): mask a sampled token by how far the policy's *distribution* moved
from the one that sampled it, not by the probability ratio of the token.

PPO's ratio ρ = π/μ is a one-sample estimate of the divergence: a rare token's ratio swings
wildly while a likely token's distribution can move a lot at ρ ≈ 1. DPPO's Binary
approximations compare the two-outcome distributions {the sampled token, everything else}:

    TV:  p − q                                     (p = π(y_t), q = μ(y_t))
    KL:  q log(q/p) + (1 − q) log((1 − q)/(1 − p))

and drop a token's gradient when the move goes past δ in the direction its advantage pushes
(Â > 0 and p − q > δ_high, or Â ≤ 0 and p − q < −δ_low; for KL, past δ and on that side).
Kept tokens train with the stop-gradient ratio: loss −sg[min(ρ, c)]·Â·ℓ_t (reference
``current``), token-mean. As the authors' ``core_algos.py`` (``dppo_binary_tv`` /
``dppo_binary_kl``, and their ``_recompute`` variants measuring from π_old); prime-rl's default
loss is the TV mask with no cap c (its gradient −ρ·Â·∇ℓ is the same) plus a KL term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from alignlib.estimator.masks import MASKS, Mask, UnitTerms
from alignlib.estimator.registry import check_choice, check_number
from alignlib.estimator.units import Units


def sampling_logprobs(units: Units) -> Tensor:
    """[R, U] μ: the sampling engine's log-probs where the batch has them (a token an engine
    could not score, NaN, takes π_old's), else π_old's; detached."""
    assert units.old is not None
    old = units.old.detach()
    if units.behaviour is None:
        return old
    behaviour = units.behaviour.detach()
    return torch.where(behaviour.isnan(), old, behaviour)


def binary_divergence(logp: Tensor, anchor: Tensor, kind: str) -> Tensor:
    """[R, U] p − q (``tv``) or the binary KL(q ‖ p) (``kl``), p = exp(logp), q = exp(anchor)."""
    p, q = logp.exp(), anchor.exp()
    if kind == "tv":
        return p - q
    eps = 1e-8  # the authors' guard for p or q at 1
    return q * (anchor - logp) + (1 - q) * torch.log((1 - q + eps) / (1 - p + eps))


@MASKS.register("dppo")
@dataclass(frozen=True)
class DivergenceTrustRegion(Mask):
    """DPPO-Binary-TV / -KL: a token whose move exceeds δ in its advantage's direction passes
    no gradient; the others are weighted by sg[min(ρ, c)], ρ = π/μ. Use the ``current``
    reference (score ℓ_t)."""

    needs: ClassVar[dict[str, str]] = {"old_logprobs": "DPPO's trust region is around π_old"}
    token_level: ClassVar[bool] = True
    reads_behaviour: ClassVar[bool] = True
    folds_behaviour: ClassVar[bool] = True
    divergence: Literal["tv", "kl"] = "tv"
    delta_low: float = 0.2
    """δ for tokens the advantage pushes down (Â ≤ 0)."""
    delta_high: float = 0.2
    """δ for tokens the advantage pushes up (Â > 0)."""
    anchor: Literal["sampling", "old"] = "sampling"
    """Measure the move from μ, the engine that sampled (the authors' default: it also covers
    the engine/trainer mismatch), or from π_old, the trainer's recompute (``_recompute``)."""
    ratio_cap: float | None = 10.0
    """c in sg[min(ρ, c)] (the authors' ``clip_ratio_c``); None: no cap (prime-rl)."""
    clamp: float = 20.0
    """log ρ is clamped above at this before exp (the authors' guard)."""

    def __post_init__(self) -> None:
        owner = "DivergenceTrustRegion"
        check_choice(owner, "divergence", self.divergence, ("tv", "kl"))
        check_choice(owner, "anchor", self.anchor, ("sampling", "old"))
        check_number(owner, "delta_low", self.delta_low, ge=0, why="a divergence bound")
        check_number(owner, "delta_high", self.delta_high, ge=0, why="a divergence bound")
        check_number(owner, "ratio_cap", self.ratio_cap, gt=0, optional=True)
        check_number(owner, "clamp", self.clamp, gt=0)

    def apply(self, units: Units, adv: Tensor, terms: UnitTerms, prepared: dict) -> UnitTerms:
        assert units.old is not None
        logp, sampling = units.logp.detach(), sampling_logprobs(units)
        anchor = sampling if self.anchor == "sampling" else units.old.detach()
        moved = binary_divergence(logp, anchor, self.divergence)
        if self.divergence == "tv":
            up, down = moved > self.delta_high, moved < -self.delta_low
        else:
            up = (moved > self.delta_high) & (logp > anchor)
            down = (moved > self.delta_low) & (logp < anchor)
        pushed_up = adv.detach() > 0
        masked = torch.where(pushed_up, up, down)
        ratio = (logp - sampling).clamp(max=self.clamp).exp()
        if self.ratio_cap is not None:
            ratio = ratio.clamp(max=self.ratio_cap)
        weight = ratio * (~masked).to(ratio.dtype)
        terms.weight = terms.weight * weight
        terms.value = terms.value * weight
        terms.indicators["masked_frac"] = (masked & (adv.detach() != 0)).to(ratio.dtype)
        terms.indicators["masked_up"] = (masked & pushed_up).to(ratio.dtype)
        terms.indicators["masked_down"] = (masked & (adv.detach() < 0)).to(ratio.dtype)
        terms.indicators["ppo_kl"] = sampling - logp
        return terms
