"""Reference-free preference weights: the margin is the policy's own log-likelihoods, with no
π_ref (TPO, TPO-L / SimPO, CPO's and ORPO's contrastive terms)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from alignlib.estimator.advantages import ADVANTAGES
from alignlib.estimator.preferences import Pairs, PairWeights, PairwiseAdvantage, check_beta
from alignlib.estimator.registry import check_number


def sigmoid_pair(beta: float, logits: Tensor, reward_w: Tensor, reward_l: Tensor) -> PairWeights:
    """−log σ(logits) with d/dlogits scaled by β into the weights (TPO, TPO-L, SimPO, CPO)."""
    weight = beta * torch.sigmoid(-logits)
    return PairWeights(weight, -weight, -F.logsigmoid(logits), reward_w, reward_l)


@ADVANTAGES.register("tpo")
@dataclass(frozen=True)
class TPOWeights(PairwiseAdvantage):
    """TPO's contrastive term, reference-free: −log σ(β(l(y_w) − l(y_l))).

    The gold-response NLL is a separate ``nll`` regularizer on DEMO rows (see the tpo preset).
    """

    needs: ClassVar[dict[str, str]] = {}
    beta: float = 0.01

    def __post_init__(self) -> None:
        check_beta(self, self.beta)

    def weights(self, pairs: Pairs) -> PairWeights:
        logits = self.beta * (pairs.policy_w - pairs.policy_l)
        return sigmoid_pair(
            self.beta, logits, self.beta * pairs.policy_w, self.beta * pairs.policy_l
        )


@ADVANTAGES.register("tpo_l")
@dataclass(frozen=True)
class TPOLWeights(PairwiseAdvantage):
    """TPO-L: −log σ(β(l̄_w − l̄_l) − γ) with length-averaged log-probs (sequence-mean)."""

    needs: ClassVar[dict[str, str]] = {}
    beta: float = 0.01
    gamma: float = 0.5
    """Target reward margin γ."""
    row_margins: bool = False
    """Also subtract each pair's own margin m from the data's `margin` column (batch.margins;
    0 without one): −log σ(β(l_w − l_l) − γ − m), TRL RewardTrainer's per-row margin."""

    def __post_init__(self) -> None:
        check_beta(self, self.beta)
        check_number("TPOLWeights", "gamma", self.gamma)

    def weights(self, pairs: Pairs) -> PairWeights:
        logits = self.beta * (pairs.policy_w - pairs.policy_l) - self.gamma
        if self.row_margins and pairs.margins is not None:
            logits = logits - pairs.margins
        return sigmoid_pair(
            self.beta, logits, self.beta * pairs.policy_w, self.beta * pairs.policy_l
        )


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − eˣ) for x < 0, stable at both ends (Mächler 2012)."""
    return torch.where(
        x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x))
    )


@ADVANTAGES.register("orpo")
@dataclass(frozen=True)
class ORPOWeights(PairwiseAdvantage):
    """ORPO's odds-ratio term, reference-free: −β·log σ(z), z = log odds(P_w) − log odds(P_l),
    P = exp(l̄) the length-averaged likelihood (sequence-mean), odds = P/(1 − P).

    dz/dl̄ = 1/(1 − P), so c_w = βσ(−z)/(1 − P_w) and c_l = −βσ(−z)/(1 − P_l). The paper's
    NLL on the chosen response is a separate ``nll`` term (see the orpo preset).
    """

    needs: ClassVar[dict[str, str]] = {}
    beta: float = 0.1
    """λ in the paper (TRL's ``beta``): weight of the odds-ratio term against the NLL."""

    def __post_init__(self) -> None:
        check_beta(self, self.beta)

    def weights(self, pairs: Pairs) -> PairWeights:
        log_odds = (pairs.policy_w - log1mexp(pairs.policy_w)) - (
            pairs.policy_l - log1mexp(pairs.policy_l)
        )
        weight = self.beta * torch.sigmoid(-log_odds)
        return PairWeights(
            weight / -torch.expm1(pairs.policy_w),
            -weight / -torch.expm1(pairs.policy_l),
            -self.beta * F.logsigmoid(log_odds),
            self.beta * pairs.policy_w,
            self.beta * pairs.policy_l,
        )
