"""Masks against stale or mismatched samples, from the sampling engine's log-probs: off-policy
sequence masking (DeepSeek-V3.2) and M2PO's second-moment trust region.

Off-policy sequence masking (DeepSeek-AI 2025, "DeepSeek-V3.2", eq. 9; TRL's
``off_policy_mask_threshold``).

A sampled sequence whose advantage is negative and whose policy has drifted from the one that
sampled it, mean_t(log π_behaviour(y_t) − log π_θ(y_t)) > δ over its tokens, passes no
gradient: pushing down a sample the policy would no longer produce mostly adds noise. The
drift is measured from the sampling engine's own log-probs when the batch carries them (a
rollout correction, or this mask, makes the online trainer put them on its scale), so it sees
both the updates since sampling and the engine/trainer mismatch; otherwise from π_old. Masked
tokens keep their place in every normalizer (the paper's M_{i,t} multiplies the token loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from alignlib.estimator.batch import Batch, Role
from alignlib.estimator.masks import MASKS, Mask, UnitTerms
from alignlib.estimator.registry import check_number
from alignlib.estimator.units import Units


def gap_to_behaviour(logp: Tensor, units: Units) -> Tensor:
    """[R, U] ``logp`` − log π_behaviour, detached: the engine's log-probs when the batch has
    them, else π_old; NaN (a token an engine could not score) counts as no gap."""
    behaviour = units.behaviour if units.behaviour is not None else units.old
    assert behaviour is not None
    return torch.nan_to_num(logp.detach() - behaviour.detach(), nan=0.0)


def drop_tokens(units: Units, terms: UnitTerms, keep: Tensor) -> UnitTerms:
    """``terms`` with only the ``keep`` tokens passing gradient and loss; the others logged as
    `m2_dropped`."""
    kept = keep.to(terms.weight.dtype)
    terms.weight = terms.weight * kept
    terms.value = terms.value * kept
    terms.indicators["m2_dropped"] = (1 - kept) * units.mask
    return terms


def sequence_drift(units: Units) -> Tensor:
    """[R] mean over each row's valid units of log π_behaviour − log π_θ (no gradient; see
    :func:`gap_to_behaviour`)."""
    gap = -gap_to_behaviour(units.logp, units) * units.mask
    return gap.sum(-1) / units.mask.sum(-1).clamp(min=1)


@MASKS.register("off_policy_sequence")
@dataclass(frozen=True)
class OffPolicySequenceMask(Mask):
    """DeepSeek-V3.2's M_{i,t}: 0 where Â_{i,t} < 0 and the row's drift exceeds δ, else 1;
    only sampled rows (a demonstration was not sampled by any policy)."""

    needs: ClassVar[dict[str, str]] = {
        "old_logprobs": "off-policy sequence masking measures the drift from the sampling policy"
    }
    reads_behaviour: ClassVar[bool] = True
    delta: float = 0.5
    """δ: the largest mean log-ratio log π_behaviour − log π_θ of a negative-advantage sequence
    that still trains (TRL's example value; the paper does not publish its own)."""

    def __post_init__(self) -> None:
        check_number("OffPolicySequenceMask", "delta", self.delta, ge=0, why="a drift bound")

    def apply(self, units: Units, adv: Tensor, terms: UnitTerms, prepared: dict) -> UnitTerms:
        drifted = sequence_drift(units) > self.delta
        sampled = units.roles == int(Role.SAMPLE)
        drop = (adv.detach() < 0) & (drifted & sampled).unsqueeze(-1)
        keep = (~drop).to(terms.weight.dtype)
        terms.weight = terms.weight * keep
        terms.value = terms.value * keep
        terms.indicators["off_policy_masked"] = drop.to(terms.value.dtype)
        return terms


def second_moment_keep(m2: Tensor, valid: Tensor, threshold: float) -> Tensor:
    """[R, T] bool: the valid tokens left after dropping the largest m2 values, one by one,
    until the mean over those left is below ``threshold`` (all but the smallest at worst);
    among equal values the lower flat index is dropped first."""
    flat = valid.flatten().nonzero().flatten()
    keep = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device)
    if not flat.numel():
        return keep.view_as(valid)
    values = m2.flatten()[flat].double()
    order = values.sort(descending=True, stable=True).indices
    ordered = values[order]
    count = torch.arange(ordered.numel(), 0, -1, device=ordered.device, dtype=ordered.dtype)
    rest_mean = ordered.flip(0).cumsum(0).flip(0) / count  # mean of ordered[i:]
    below = (rest_mean < threshold).nonzero().flatten()
    dropped = int(below[0]) if below.numel() else ordered.numel() - 1
    keep[flat[order[dropped:]]] = True
    return keep.view_as(valid)


@MASKS.register("second_moment")
@dataclass(frozen=True)
class SecondMomentMask(Mask):
    """M2PO's mask (Zheng et al. 2025, "Prosperity before Collapse", arXiv 2510.01161; AReaL's
    ``m2_threshold``): over the optimizer mini-batch, the tokens with the largest
    (log π_old − log π_behaviour)² leave the loss and its normalizers until the mean of the
    rest is below τ, so a stale or mismatched sample is cut only where it is an outlier.
    π_behaviour is the engine's log-probs (π_old without them: nothing is dropped)."""

    needs: ClassVar[dict[str, str]] = {
        "old_logprobs": "the second moment compares π_old with the policy that sampled"
    }
    token_level: ClassVar[bool] = True
    reads_behaviour: ClassVar[bool] = True
    reads_old_in_prepare: ClassVar[bool] = True
    threshold: float = 0.04
    """τ_M2, the largest mean squared log-ratio left (AReaL's example: 0.04)."""

    def __post_init__(self) -> None:
        check_number("SecondMomentMask", "threshold", self.threshold, gt=0, why="a mean square")

    def prepare(self, batch: Batch, units: Units, adv: Tensor) -> dict[str, Tensor]:
        assert units.old is not None
        gap = gap_to_behaviour(units.old, units)
        return {"keep": second_moment_keep(gap**2, units.mask > 0, self.threshold)}

    def counted(self, prepared: dict[str, Tensor]) -> Tensor | None:
        return prepared["keep"]

    def apply(self, units: Units, adv: Tensor, terms: UnitTerms, prepared: dict) -> UnitTerms:
        return drop_tokens(units, terms, prepared["keep"])
