"""Off-policy sequence masking (DeepSeek-AI 2025, "DeepSeek-V3.2", eq. 9; TRL's
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

from alignlib.estimator.batch import Role
from alignlib.estimator.masks import MASKS, Mask, UnitTerms
from alignlib.estimator.registry import check_number
from alignlib.estimator.units import Units


def sequence_drift(units: Units) -> Tensor:
    """[R] mean over each row's valid units of log π_behaviour − log π_θ (no gradient); the
    engine's log-probs when the batch has them, else π_old. NaN (a token an engine could not
    score) counts as no drift."""
    behaviour = units.behaviour if units.behaviour is not None else units.old
    assert behaviour is not None
    gap = torch.nan_to_num(behaviour.detach() - units.logp.detach(), nan=0.0) * units.mask
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
