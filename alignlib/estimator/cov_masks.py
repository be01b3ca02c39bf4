"""Clip-Cov and KL-Cov (Cui et al., "The Entropy Mechanism of RL for Reasoning LMs").

Both rank tokens by Cov_i = (ℓ_i − mean ℓ)(Â_i − mean Â) over the valid tokens. The reference
code selects per micro-batch per GPU, so its selection changes with the micro-batch size;
here the default ``scope="global"`` selects once over the whole optimizer mini-batch in
``prepare``. ``scope="per_microbatch"`` reproduces the reference behaviour for parity runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from alignlib.estimator.batch import Batch
from alignlib.estimator.masks import MASKS, Mask, PPOClip, UnitTerms
from alignlib.estimator.registry import check_choice, check_number
from alignlib.estimator.units import Units

Scope = Literal["global", "per_microbatch"]


def token_covariance(logp: Tensor, adv: Tensor, mask: Tensor) -> Tensor:
    """[R, U] centred product (ℓ − mean ℓ)(Â − mean Â) with means over valid units, detached.

    Computed in at least float32 whatever the training dtype (bf16 means are too coarse).
    """
    dtype = torch.promote_types(logp.dtype, torch.float32)
    logp, adv, mask = logp.detach().to(dtype), adv.detach().to(dtype), mask.to(dtype)
    count = mask.sum().clamp(min=1)
    mean_logp = (logp * mask).sum() / count
    mean_adv = (adv * mask).sum() / count
    return (logp - mean_logp) * (adv - mean_adv) * mask


def selection_count(ratio: float, num_valid: int) -> int:
    """k = max(⌊ratio·N⌋, 1) over the N valid units (not over the candidates)."""
    return max(math.floor(ratio * num_valid), 1)


@MASKS.register("clip_cov")
@dataclass
class ClipCov(Mask):
    """Clip-Cov: PPO clip, then drop k random tokens with ω_low < Cov < ω_high (not already
    clipped); dropped tokens get zero loss and gradient but still count in the denominator."""

    needs: ClassVar[dict[str, str]] = {"old_logprobs": "Clip-Cov applies PPO's ratio clip"}
    reads_present_in_prepare: ClassVar[bool] = True  # Cov(log π, Â) of the present policy
    ratio: float = 2e-4
    """Fraction r of valid tokens to drop: k = max(⌊r·N⌋, 1)."""
    cov_low: float = 1.0
    cov_high: float = 5.0
    clip: PPOClip = field(default_factory=lambda: PPOClip(eps_low=1.0, eps_high=1.0, clamp=None))
    """The PPO clip applied first (the paper widens it to ε = 1; no dual clip)."""
    seed: int = 0
    """Seed of the generator drawing the dropped tokens (its state advances every draw)."""
    scope: Scope = "global"
    _generator: torch.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_number("ClipCov", "ratio", self.ratio, gt=0, le=1, why="a fraction of tokens")
        check_number("ClipCov", "cov_low", self.cov_low)
        check_number("ClipCov", "cov_high", self.cov_high, gt=self.cov_low, why="above cov_low")
        check_choice("ClipCov", "scope", self.scope, ("global", "per_microbatch"))

    def draw(self, units: Units, adv: Tensor) -> Tensor:
        """[R, U] bool: the tokens dropped for this batch."""
        if self._generator is None:
            self._generator = torch.Generator(device="cpu").manual_seed(self.seed)
        cov = token_covariance(units.logp, adv, units.mask)
        _, strict, _ = self.clip.clip(units, adv)
        valid = units.mask > 0
        candidates = valid & (cov > self.cov_low) & (cov < self.cov_high) & ~strict
        flat = candidates.flatten().nonzero().flatten()
        k = min(selection_count(self.ratio, int(valid.sum())), flat.numel())
        # Drawn on the CPU generator whatever the device: the same tokens on CPU and GPU.
        draw = torch.randperm(flat.numel(), generator=self._generator, device="cpu")
        chosen = flat[draw[:k].to(flat.device)]
        drop = torch.zeros(candidates.numel(), dtype=torch.bool, device=candidates.device)
        drop[chosen] = True
        return drop.view_as(candidates)

    def prepare(self, batch: Batch, units: Units, adv: Tensor) -> dict[str, Tensor]:
        return {"drop": self.draw(units, adv)} if self.scope == "global" else {}

    def apply(self, units: Units, adv: Tensor, terms: UnitTerms, prepared: dict) -> UnitTerms:
        drop = prepared["drop"] if self.scope == "global" else self.draw(units, adv)
        terms = self.clip.apply(units, adv, terms, {})
        keep = (~drop).to(terms.weight.dtype)
        terms.weight = terms.weight * keep
        terms.value = terms.value * keep
        terms.indicators["cov_dropped"] = drop.to(terms.value.dtype)
        return terms

    def state_dict(self) -> dict[str, Tensor]:
        """Generator state, so a resumed run draws the same tokens."""
        return {} if self._generator is None else {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "generator" in state:
            self._generator = torch.Generator(device="cpu")
            self._generator.set_state(state["generator"])


@MASKS.register("kl_cov")
@dataclass(frozen=True)
class KLCov(Mask):
    """KL-Cov: no clip; the top-k tokens by Cov get an extra β·|ℓ − ℓ_old| penalty.

    Ties in the top-k go to the lower flat index. It does nothing while ℓ == ℓ_old, so it only
    acts from the second optimizer mini-batch of a rollout batch on.
    """

    needs: ClassVar[dict[str, str]] = {"old_logprobs": "KL-Cov penalizes |log π − log π_old|"}
    reads_present_in_prepare: ClassVar[bool] = True  # Cov(log π, Â) of the present policy
    ratio: float = 2e-3
    """Fraction of valid tokens penalized: k = max(1, ⌊N·ratio⌋) (2e-3 for 7B, 2e-4 for 32B)."""
    coef: float = 1.0
    """β, the weight of the |log-ratio| penalty."""
    scope: Scope = "global"

    def __post_init__(self) -> None:
        check_number("KLCov", "ratio", self.ratio, gt=0, le=1, why="a fraction of tokens")
        check_number("KLCov", "coef", self.coef, ge=0, why="a penalty weight")
        check_choice("KLCov", "scope", self.scope, ("global", "per_microbatch"))

    def select(self, units: Units, adv: Tensor) -> Tensor:
        valid = units.mask > 0
        cov = token_covariance(units.logp, adv, units.mask).flatten()
        flat_valid = valid.flatten().nonzero().flatten()
        k = min(selection_count(self.ratio, flat_valid.numel()), flat_valid.numel())
        # Stable descending sort: among equal covariances the lower flat index wins.
        order = cov[flat_valid].sort(descending=True, stable=True).indices[:k]
        chosen = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device)
        chosen[flat_valid[order]] = True
        return chosen.view_as(valid)

    def prepare(self, batch: Batch, units: Units, adv: Tensor) -> dict[str, Tensor]:
        return {"selected": self.select(units, adv)} if self.scope == "global" else {}

    def apply(self, units: Units, adv: Tensor, terms: UnitTerms, prepared: dict) -> UnitTerms:
        selected = prepared["selected"] if self.scope == "global" else self.select(units, adv)
        assert units.old is not None
        gap = (units.logp - units.old).abs() * selected.to(units.logp.dtype) * self.coef
        terms.penalty = gap if terms.penalty is None else terms.penalty + gap
        terms.value = terms.value + gap.detach()
        terms.indicators["kl_cov_selected"] = selected.to(terms.value.dtype)
        terms.indicators["ppo_kl_abs"] = (units.logp - units.old).detach().abs()
        return terms
