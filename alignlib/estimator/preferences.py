"""Preference weights: every pairwise loss here is per-sequence separable, so its gradient is
−Σ_i c_i ∇l(y_i) with closed-form stop-gradient weights c_i — an advantage component.

Each class states its loss and weights (c_w on the chosen row, c_l on the rejected row) and
returns the loss value for logging. Margins use the likelihood component's sequence value, so
IPO and TPO-L pair with ``sequence-mean`` and the others with ``sequence-sum``.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from alignlib.estimator.advantages import ADVANTAGES, Advantage, AdvantageResult
from alignlib.estimator.batch import Batch, BatchError, Role
from alignlib.estimator.registry import check_choice, check_number
from alignlib.estimator.units import Likelihood


@dataclass
class Pairs:
    """Detached per-pair sequence log-likelihoods (w = chosen, l = rejected)."""

    policy_w: Tensor
    policy_l: Tensor
    ref_w: Tensor | None
    ref_l: Tensor | None
    prev_w: Tensor | None
    prev_l: Tensor | None
    len_w: Tensor
    len_l: Tensor
    margins: Tensor | None = None
    """Each pair's target margin from the data (batch.margins), or None."""

    @property
    def log_ratios(self) -> tuple[Tensor, Tensor]:
        """u = log π − log π_ref of the chosen and the rejected response."""
        assert self.ref_w is not None and self.ref_l is not None
        return self.policy_w - self.ref_w, self.policy_l - self.ref_l

    def implicit_rewards(self, beta: float) -> tuple[Tensor, Tensor]:
        """β·(log π − log π_ref) of the chosen and the rejected response."""
        u_w, u_l = self.log_ratios
        return beta * u_w, beta * u_l

    @property
    def margin(self) -> Tensor:
        """Δ = r(y_w) − r(y_l) with r = log π − log π_ref."""
        u_w, u_l = self.log_ratios
        return u_w - u_l


@dataclass
class PairWeights:
    chosen: Tensor
    rejected: Tensor
    loss: Tensor
    reward_chosen: Tensor
    """Implicit reward of the chosen response (β·log-ratio, or β·l without a reference)."""
    reward_rejected: Tensor


BETA_WHY = "β scales the margin: 0 trains nothing and a negative β learns the rejected answers"


def check_beta(owner: object, beta: object) -> None:
    """β > 0 for every pairwise loss (a wrong sign or zero trains the wrong objective, silently)."""
    check_number(type(owner).__name__, "beta", beta, gt=0, why=BETA_WHY)


def pair_rows(batch: Batch, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Row indices of the chosen and rejected row of each pair, aligned by pair id."""
    if batch.pair_ids is None:
        raise BatchError(
            "preference methods need batch.pair_ids linking chosen and rejected rows "
            "(Batch.from_pairs builds them)"
        )
    codes = batch.role_codes()
    found = []
    for role in (Role.CHOSEN, Role.REJECTED):
        idx = (rows & (codes == int(role))).nonzero().flatten()
        found.append(idx[batch.pair_ids[idx].argsort()])
    chosen, rejected = found
    if not torch.equal(batch.pair_ids[chosen], batch.pair_ids[rejected]):
        lone = set(batch.pair_ids[chosen].tolist()) ^ set(batch.pair_ids[rejected].tolist())
        raise BatchError(
            f"pair ids {sorted(lone)[:5]} lack a chosen or a rejected row in this batch; "
            "every pair needs both, in the same micro-batch (Batch.split keeps pairs together)"
        )
    return chosen, rejected


class PairwiseAdvantage(Advantage):
    """Base of the preference weights: gathers pairs, scatters c_w / c_l back onto rows."""

    per_call: ClassVar[bool] = True
    needs: ClassVar[dict[str, str]] = {
        "ref_logprobs": "the implicit reward r = log π − log π_ref needs reference log-probs"
    }

    @abstractmethod
    def weights(self, pairs: Pairs) -> PairWeights:
        """c_w, c_l and the loss of each pair (before the 1/B of the aggregation)."""

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        chosen, rejected = pair_rows(batch, rows)

        def sequences(logprobs: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
            if logprobs is None:
                return None, None
            values = likelihood.sequence(logprobs.detach(), batch.mask)
            return values[chosen], values[rejected]

        lengths = batch.mask.sum(-1)
        policy_w, policy_l = sequences(batch.logprobs)
        assert policy_w is not None and policy_l is not None
        pairs = Pairs(
            policy_w,
            policy_l,
            *sequences(batch.ref_logprobs),
            *sequences(batch.prev_logprobs),
            len_w=lengths[chosen],
            len_l=lengths[rejected],
            margins=None if batch.margins is None else batch.margins[chosen].to(policy_w.dtype),
        )
        out = self.weights(pairs)
        values = batch.logprobs.new_zeros(batch.num_rows)
        values[chosen], values[rejected] = out.chosen, out.rejected
        row_loss = values.new_zeros(batch.num_rows)
        row_loss[chosen] = out.loss

        def on_chosen(stat: Tensor) -> Tensor:
            return values.new_zeros(batch.num_rows).index_copy(0, chosen, stat.to(values.dtype))

        reward_margin = out.reward_chosen - out.reward_rejected
        metrics = {
            "margin": on_chosen(reward_margin),
            "accuracy": on_chosen((reward_margin > 0).to(values.dtype)),
            "chosen_reward": on_chosen(out.reward_chosen),
            "rejected_reward": on_chosen(out.reward_rejected),
            "chosen_logp": on_chosen(policy_w),
            "rejected_logp": on_chosen(policy_l),
        }
        return AdvantageResult(values.detach(), row_loss.detach(), metrics)


def smoothed_logistic(beta: float, z: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The weight β[(1 − ε)σ(−z) − εσ(z)] and the loss −(1 − ε) log σ(z) − ε log σ(−z) of the
    logistic loss on a margin z with labels smoothed by ε (cDPO; ε = 0 is DPO's)."""
    weight = beta * ((1 - eps) * torch.sigmoid(-z) - eps * torch.sigmoid(z))
    return weight, -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")


@ADVANTAGES.register("dpo")
@dataclass(frozen=True)
class DPOWeights(PairwiseAdvantage):
    """DPO: −log σ(z), z = β(g(u_w) − g(u_l)), u = log π − log π_ref; c_w = βσ(−z)·g'(u_w),
    c_l = −βσ(−z)·g'(u_l). Standard DPO is g(u) = u (reverse KL).

    ``label_smoothing`` ε (cDPO, Mitchell 2023): −(1 − ε) log σ(z) − ε log σ(−z), so σ(−z)
    above becomes (1 − ε)σ(−z) − εσ(z). ``divergence`` (f-DPO, Wang et al. 2024) replaces u by
    the f-divergence's f'(π/π_ref) up to a constant: forward_kl g = 1 − e^(−u); js
    g = log 2 + log σ(u); alpha g = (1 − e^(−αu))/α with the paper's α (TRL's
    ``f_alpha_divergence_coef`` is 1 − α).
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    divergence: Literal["reverse_kl", "forward_kl", "js", "alpha"] = "reverse_kl"
    divergence_alpha: float = 0.5
    """α of the alpha divergence (used only by it): → 0 is reverse KL, 1 is forward KL."""
    length_penalty: float = 0.0
    """R-DPO's α (Park et al. 2024): z gains α(|y_w| − |y_l|), the Bradley–Terry margin of the
    reward the policy is optimal for when the objective charges α per token; 0: DPO."""

    def __post_init__(self) -> None:
        check_beta(self, self.beta)
        check_number("DPOWeights", "length_penalty", self.length_penalty, ge=0)
        check_number(
            "DPOWeights", "label_smoothing", self.label_smoothing, ge=0, lt=0.5,
            why="the assumed fraction of flipped labels (0.5 would make every pair a coin flip)",
        )  # fmt: skip
        check_choice("DPOWeights", "divergence", self.divergence, DIVERGENCES)
        check_number("DPOWeights", "divergence_alpha", self.divergence_alpha, gt=0, lt=1)

    def score(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """g(u) and g'(u) of the chosen divergence."""
        if self.divergence == "forward_kl":
            return 1 - torch.exp(-u), torch.exp(-u)
        if self.divergence == "js":
            return math.log(2.0) + F.logsigmoid(u), torch.sigmoid(-u)
        if self.divergence == "alpha":
            a = self.divergence_alpha
            return -torch.expm1(-a * u) / a, torch.exp(-a * u)
        return u, torch.ones_like(u)

    def weights(self, pairs: Pairs) -> PairWeights:
        (g_w, slope_w), (g_l, slope_l) = map(self.score, pairs.log_ratios)
        reward_w, reward_l = pairs.implicit_rewards(self.beta)
        z = self.beta * (g_w - g_l)
        if self.length_penalty:
            z = z + self.length_penalty * (pairs.len_w - pairs.len_l).to(z.dtype)
        weight, loss = smoothed_logistic(self.beta, z, self.label_smoothing)
        return PairWeights(weight * slope_w, -weight * slope_l, loss, reward_w, reward_l)


@ADVANTAGES.register("ipo")
@dataclass(frozen=True)
class IPOWeights(PairwiseAdvantage):
    """IPO: (Δ' − 1/(2β))² on length-averaged log-probs; c_w = −2(Δ' − 1/(2β)) = −c_l."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        check_beta(self, self.beta)

    def weights(self, pairs: Pairs) -> PairWeights:
        gap = pairs.margin - 1.0 / (2.0 * self.beta)
        reward_w, reward_l = pairs.implicit_rewards(self.beta)
        return PairWeights(-2.0 * gap, 2.0 * gap, gap**2, reward_w, reward_l)


@ADVANTAGES.register("hinge")
@dataclass(frozen=True)
class HingeWeights(PairwiseAdvantage):
    """SLiC hinge: relu(1 − βΔ); c_w = β·1[βΔ < 1] = −c_l."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        check_beta(self, self.beta)

    def weights(self, pairs: Pairs) -> PairWeights:
        logits = self.beta * pairs.margin
        weight = self.beta * (logits < 1).to(logits.dtype)
        reward_w, reward_l = pairs.implicit_rewards(self.beta)
        return PairWeights(weight, -weight, F.relu(1 - logits), reward_w, reward_l)


@ADVANTAGES.register("rpo")
@dataclass(frozen=True)
class RPOWeights(PairwiseAdvantage):
    """RPO: DPO plus an SFT term on the chosen response.

    ``sum`` (official, cumulative): + ηβ·(−l(y_w)), so c_w = βσ(−βΔ) + ηβ.
    ``seq_mean`` (average variant): + η·(−l(y_w)/|y_w|), so c_w = βσ(−βΔ) + η/|y_w|.
    """

    beta: float = 0.01
    eta: float = 0.005
    sft_normalization: Literal["sum", "seq_mean"] = "sum"

    def __post_init__(self) -> None:
        check_beta(self, self.beta)
        check_number("RPOWeights", "eta", self.eta, ge=0, why="η weighs the SFT term")
        check_choice("RPOWeights", "sft_normalization", self.sft_normalization, ("sum", "seq_mean"))

    def weights(self, pairs: Pairs) -> PairWeights:
        dpo = DPOWeights(self.beta).weights(pairs)
        if self.sft_normalization == "sum":
            sft_weight = torch.full_like(pairs.policy_w, self.eta * self.beta)
        else:
            sft_weight = self.eta / pairs.len_w.clamp(min=1)
        loss = dpo.loss - sft_weight * pairs.policy_w
        return PairWeights(
            dpo.chosen + sft_weight, dpo.rejected, loss, dpo.reward_chosen, dpo.reward_rejected
        )


@ADVANTAGES.register("inpo")
@dataclass(frozen=True)
class INPOWeights(PairwiseAdvantage):
    """INPO: (h − c)², h = Δ_θ − ratio·Δ_ref − (1 − ratio)·Δ_{π_t}; c_w = −2(h − c) = −c_l."""

    needs: ClassVar[dict[str, str]] = {
        "ref_logprobs": "INPO's target mixes the reference policy's log-probs",
        "prev_logprobs": "INPO's target mixes the previous iterate π_t's log-probs",
    }
    ratio: float = 1.0 / 3.0
    """The paper's η·τ: weight of π_ref against π_t in the target."""
    eta: float = 0.005
    """Sets the target c = 1/(2·eta) (the reference code's IPO-style τ)."""

    def __post_init__(self) -> None:
        check_number("INPOWeights", "ratio", self.ratio, ge=0, le=1, why="a mixing weight")
        check_number("INPOWeights", "eta", self.eta, gt=0, why="the target is 1/(2·eta)")

    def weights(self, pairs: Pairs) -> PairWeights:
        assert pairs.ref_w is not None and pairs.ref_l is not None
        assert pairs.prev_w is not None and pairs.prev_l is not None
        h = (
            (pairs.policy_w - pairs.policy_l)
            - self.ratio * (pairs.ref_w - pairs.ref_l)
            - (1 - self.ratio) * (pairs.prev_w - pairs.prev_l)
        )
        gap = h - 1.0 / (2.0 * self.eta)
        return PairWeights(
            -2.0 * gap,
            2.0 * gap,
            gap**2,
            pairs.policy_w - pairs.ref_w,
            pairs.policy_l - pairs.ref_l,
        )
