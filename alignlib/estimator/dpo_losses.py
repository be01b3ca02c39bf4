"""More losses on DPO's log-ratios u = log π − log π_ref (the ones TRL's ``DPOTrainer`` offers as
``loss_type``, and DPO-Positive): each is a function of (u_w, u_l) per pair, so its gradient
is −c_w ∇l(y_w) − c_l ∇l(y_l) with the closed-form weights below (r = βu, z = β(u_w − u_l),
σ'(x) = σ(x)σ(−x)).

Sigmoid with label smoothing (cDPO) and the f-divergences are options of
:class:`~alignlib.estimator.preferences.DPOWeights`; hinge and IPO have their own classes there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from alignlib.estimator.advantages import ADVANTAGES
from alignlib.estimator.preferences import (
    Pairs,
    PairWeights,
    PairwiseAdvantage,
    check_beta,
    smoothed_logistic,
)
from alignlib.estimator.registry import check_number


def sigmoid_slope(x: Tensor) -> Tensor:
    """σ'(x) = σ(x)σ(−x)."""
    return torch.sigmoid(x) * torch.sigmoid(-x)


@ADVANTAGES.register("robust")
@dataclass(frozen=True)
class RobustDPOWeights(PairwiseAdvantage):
    """Robust DPO (Chowdhury et al. 2024), unbiased when each label is flipped with probability
    ε: [−(1 − ε) log σ(z) + ε log σ(−z)] / (1 − 2ε); c_w = β[(1 − ε)σ(−z) + εσ(z)]/(1 − 2ε)
    = −c_l."""

    beta: float = 0.1
    label_smoothing: float = 0.1
    """ε, the assumed fraction of flipped preference labels, in [0, 0.5); 0 is DPO."""

    def __post_init__(self) -> None:
        check_beta(self, self.beta)
        check_number(
            "RobustDPOWeights", "label_smoothing", self.label_smoothing, ge=0, lt=0.5,
            why="the loss divides by 1 − 2ε",
        )  # fmt: skip

    def weights(self, pairs: Pairs) -> PairWeights:
        z, eps = self.beta * pairs.margin, self.label_smoothing
        scale = 1 / (1 - 2 * eps)
        weight = self.beta * scale * ((1 - eps) * torch.sigmoid(-z) + eps * torch.sigmoid(z))
        loss = scale * (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z))
        return PairWeights(weight, -weight, loss, *pairs.implicit_rewards(self.beta))


@ADVANTAGES.register("exo_pair")
@dataclass(frozen=True)
class EXOPairWeights(PairwiseAdvantage):
    """EXO-pref (Ji et al. 2024, Eq. 16), K = 2: KL(q ‖ p) with q = (σ(z), σ(−z)) the policy's
    preference and p = (1 − ε, ε) the data's: σ(z)(log σ(z) − log(1 − ε)) + σ(−z)(log σ(−z) −
    log ε). Its derivative in z is σ'(z)(z − log((1 − ε)/ε)), so c_w = −βσ'(z)(z − log((1 −
    ε)/ε)) = −c_l: the pair is pushed towards the margin z* = log((1 − ε)/ε), not to infinity."""

    beta: float = 0.1
    label_smoothing: float = 1e-3
    """ε > 0, the preference mass p gives the rejected response (TRL's advice: 1e-3)."""

    def __post_init__(self) -> None:
        check_beta(self, self.beta)
        check_number(
            "EXOPairWeights", "label_smoothing", self.label_smoothing, gt=0, lt=1,
            why="log ε and log(1 − ε) must be finite",
        )  # fmt: skip

    def weights(self, pairs: Pairs) -> PairWeights:
        z, eps = self.beta * pairs.margin, self.label_smoothing
        weight = -self.beta * sigmoid_slope(z) * (z - math.log((1 - eps) / eps))
        loss = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
            F.logsigmoid(-z) - math.log(eps)
        )
        return PairWeights(weight, -weight, loss, *pairs.implicit_rewards(self.beta))


@ADVANTAGES.register("nca_pair")
@dataclass(frozen=True)
class NCAPairWeights(PairwiseAdvantage):
    """NCA (Chen et al. 2024), paired: −log σ(r_w) − ½ log σ(−r_w) − ½ log σ(−r_l) on absolute
    implicit rewards, so the chosen likelihood is not free to fall with the rejected one.
    c_w = β(σ(−r_w) − ½σ(r_w)), c_l = −½βσ(r_l)."""

    beta: float = 0.01

    def __post_init__(self) -> None:
        check_beta(self, self.beta)

    def weights(self, pairs: Pairs) -> PairWeights:
        r_w, r_l = pairs.implicit_rewards(self.beta)
        loss = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
        chosen = self.beta * (torch.sigmoid(-r_w) - 0.5 * torch.sigmoid(r_w))
        return PairWeights(chosen, -0.5 * self.beta * torch.sigmoid(r_l), loss, r_w, r_l)


@ADVANTAGES.register("bco_pair")
@dataclass(frozen=True)
class BCOPairWeights(PairwiseAdvantage):
    """BCO (Jung et al. 2024) on pairs, as TRL's ``bco_pair`` (no reward shift δ): a binary
    classifier of chosen vs rejected on the implicit reward, −log σ(r_w) − log σ(−r_l).
    c_w = βσ(−r_w), c_l = −βσ(r_l)."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        check_beta(self, self.beta)

    def weights(self, pairs: Pairs) -> PairWeights:
        r_w, r_l = pairs.implicit_rewards(self.beta)
        loss = -F.logsigmoid(r_w) - F.logsigmoid(-r_l)
        beta = self.beta
        return PairWeights(beta * torch.sigmoid(-r_w), -beta * torch.sigmoid(r_l), loss, r_w, r_l)


@ADVANTAGES.register("sppo_hard")
@dataclass(frozen=True)
class SPPOHardWeights(PairwiseAdvantage):
    """SPPO (Wu et al. 2024, Eq. 4.7) with hard win probabilities (1 for the chosen, 0 for the
    rejected), as TRL's ``sppo_hard``: (u_w − 1/(2β))² + (u_l + 1/(2β))², β = 1/η.
    c_w = −2(u_w − 1/(2β)), c_l = −2(u_l + 1/(2β))."""

    beta: float = 1e-3

    def __post_init__(self) -> None:
        check_beta(self, self.beta)

    def weights(self, pairs: Pairs) -> PairWeights:
        u_w, u_l = pairs.log_ratios
        gap_w, gap_l = u_w - 0.5 / self.beta, u_l + 0.5 / self.beta
        return PairWeights(
            -2 * gap_w, -2 * gap_l, gap_w**2 + gap_l**2, *pairs.implicit_rewards(self.beta)
        )


@ADVANTAGES.register("apo_zero")
@dataclass(frozen=True)
class APOZeroWeights(PairwiseAdvantage):
    """APO-zero (D'Oosterlinck et al. 2024, Eq. 7), for chosen answers better than the model's
    own: 1 − σ(r_w) + σ(r_l) raises the chosen likelihood and lowers the rejected one.
    c_w = βσ'(r_w), c_l = −βσ'(r_l)."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        check_beta(self, self.beta)

    def weights(self, pairs: Pairs) -> PairWeights:
        r_w, r_l = pairs.implicit_rewards(self.beta)
        loss = 1 - torch.sigmoid(r_w) + torch.sigmoid(r_l)
        slope_w, slope_l = sigmoid_slope(r_w), sigmoid_slope(r_l)
        return PairWeights(self.beta * slope_w, -self.beta * slope_l, loss, r_w, r_l)


@ADVANTAGES.register("apo_down")
@dataclass(frozen=True)
class APODownWeights(PairwiseAdvantage):
    """APO-down (D'Oosterlinck et al. 2024, Eq. 8), for chosen answers worse than the model's
    own: σ(r_w) + 1 − σ(z) lowers both likelihoods, the rejected one more.
    c_w = β(σ'(z) − σ'(r_w)), c_l = −βσ'(z)."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        check_beta(self, self.beta)

    def weights(self, pairs: Pairs) -> PairWeights:
        r_w, r_l = pairs.implicit_rewards(self.beta)
        z = self.beta * pairs.margin
        loss = torch.sigmoid(r_w) + 1 - torch.sigmoid(z)
        slope_z = sigmoid_slope(z)
        chosen = self.beta * (slope_z - sigmoid_slope(r_w))
        return PairWeights(chosen, -self.beta * slope_z, loss, r_w, r_l)


@ADVANTAGES.register("discopop")
@dataclass(frozen=True)
class DiscoPOPWeights(PairwiseAdvantage):
    """DiscoPOP (Chris Lu et al. 2024, Eq. 5), a discovered blend of the logistic and the
    exponential loss: (1 − m)(−log σ(z)) + m·e^(−z), m = σ(z/τ) (not detached, as the paper's
    and TRL's code). dL/dz = m'(log σ(z) + e^(−z)) − (1 − m)σ(−z) − m·e^(−z), m' = σ'(z/τ)/τ;
    c_w = −β·dL/dz = −c_l."""

    beta: float = 0.05
    tau: float = 0.05
    """Temperature τ of the blend."""

    def __post_init__(self) -> None:
        check_beta(self, self.beta)
        check_number("DiscoPOPWeights", "tau", self.tau, gt=0, why="the blend is σ(z/τ)")

    def weights(self, pairs: Pairs) -> PairWeights:
        z = self.beta * pairs.margin
        blend, blend_slope = torch.sigmoid(z / self.tau), sigmoid_slope(z / self.tau) / self.tau
        exponential = torch.exp(-z)
        loss = (1 - blend) * -F.logsigmoid(z) + blend * exponential
        d_loss = (
            blend_slope * (F.logsigmoid(z) + exponential)
            - (1 - blend) * torch.sigmoid(-z)
            - blend * exponential
        )
        weight = -self.beta * d_loss
        return PairWeights(weight, -weight, loss, *pairs.implicit_rewards(self.beta))


@ADVANTAGES.register("aot")
@dataclass(frozen=True)
class AOTWeights(PairwiseAdvantage):
    """AOT (Melnyk et al. 2024): distributional preference alignment by one-dimensional optimal
    transport, i.e. the logistic loss on *sorted* margins, so the chosen reward distribution
    comes to dominate the rejected one (first-order stochastic dominance).

    ``paired``: a_i = l(y_w) − l(y_l) (policy) and b_i = its reference value are sorted over the
    mini-batch separately; Δ_k = a_(k) − b_(k). Otherwise the log-ratios u_w and u_l are sorted
    separately and Δ_k = u_w(k) − u_l(k) (TRL's ``aot_unpaired``). Loss: the mean over k of
    −(1 − ε) log σ(βΔ_k) − ε log σ(−βΔ_k); a row takes the weight of the rank its own value
    holds, c = β[(1 − ε)σ(−βΔ_k) − εσ(βΔ_k)], positive on chosen rows, negative on rejected.

    The sort couples the pairs, so the weights are computed once per optimizer mini-batch from
    the present log-probs (a no-grad pass), never per micro-batch: the gradient does not depend
    on micro-batching. TRL sorts each device micro-batch (equal with one micro-batch per step).
    """

    per_call: ClassVar[bool] = False
    reads_logprobs: ClassVar[bool] = True
    beta: float = 0.1
    label_smoothing: float = 0.0
    """ε: the smoothed logistic of cDPO (TRL applies its ``label_smoothing`` here too)."""
    paired: bool = True

    def __post_init__(self) -> None:
        check_beta(self, self.beta)
        check_number(
            "AOTWeights", "label_smoothing", self.label_smoothing, ge=0, lt=0.5,
            why="the assumed fraction of flipped labels",
        )  # fmt: skip

    def weights(self, pairs: Pairs) -> PairWeights:
        u_w, u_l = pairs.log_ratios
        assert pairs.ref_w is not None and pairs.ref_l is not None
        if self.paired:
            policy = pairs.policy_w - pairs.policy_l
            order_w = order_l = policy.argsort()
            delta = policy[order_w] - (pairs.ref_w - pairs.ref_l).sort().values
        else:
            order_w, order_l = u_w.argsort(), u_l.argsort()
            delta = u_w[order_w] - u_l[order_l]
        weight, loss = smoothed_logistic(self.beta, self.beta * delta, self.label_smoothing)
        chosen, rejected, pair_loss = (torch.empty_like(delta) for _ in range(3))
        chosen[order_w], rejected[order_l], pair_loss[order_w] = weight, -weight, loss
        return PairWeights(chosen, rejected, pair_loss, self.beta * u_w, self.beta * u_l)


@ADVANTAGES.register("dpop")
@dataclass(frozen=True)
class DPOPWeights(PairwiseAdvantage):
    """DPO-Positive (Pal et al. 2024, "Smaug", arXiv 2402.13228, eq. 3): DPO's margin minus a
    penalty once the chosen response falls below its reference likelihood,
    −log σ(z), z = β(u_w − u_l − λ·max(0, −u_w)); c_w = βσ(−z)(1 + λ·1[u_w < 0]),
    c_l = −βσ(−z). DPO lowers both likelihoods when only their gap matters; the penalty keeps
    the preferred one from sinking."""

    beta: float = 0.1
    lam: float = 50.0
    """λ of the penalty (50: the value the implementations we read default to)."""

    def __post_init__(self) -> None:
        check_beta(self, self.beta)
        check_number("DPOPWeights", "lam", self.lam, ge=0, why="a penalty weight")

    def weights(self, pairs: Pairs) -> PairWeights:
        u_w, u_l = pairs.log_ratios
        below = (u_w < 0).to(u_w.dtype)
        z = self.beta * (u_w - u_l - self.lam * torch.relu(-u_w))
        weight = self.beta * torch.sigmoid(-z)
        reward_w, reward_l = pairs.implicit_rewards(self.beta)
        return PairWeights(
            weight * (1 + self.lam * below), -weight, -F.logsigmoid(z), reward_w, reward_l
        )
