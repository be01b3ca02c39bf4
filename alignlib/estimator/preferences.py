"""Preference weights: every pairwise loss here is per-sequence separable, so its gradient is
−Σ_i c_i ∇l(y_i) with closed-form stop-gradient weights c_i — an advantage component.

Each class states its loss and weights (c_w on the chosen row, c_l on the rejected row) and
returns the loss value for logging. Margins use the likelihood component's sequence value, so
IPO and TPO-L pair with ``sequence-mean`` and the others with ``sequence-sum``.
"""

from __future__ import annotations

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

    def implicit_rewards(self, beta: float) -> tuple[Tensor, Tensor]:
        """β·(log π − log π_ref) of the chosen and the rejected response."""
        assert self.ref_w is not None and self.ref_l is not None
        return beta * (self.policy_w - self.ref_w), beta * (self.policy_l - self.ref_l)

    @property
    def margin(self) -> Tensor:
        """Δ = r(y_w) − r(y_l) with r = log π − log π_ref."""
        assert self.ref_w is not None and self.ref_l is not None
        return (self.policy_w - self.ref_w) - (self.policy_l - self.ref_l)


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


def _sigmoid_pair(beta: float, logits: Tensor, reward_w: Tensor, reward_l: Tensor) -> PairWeights:
    """−log σ(logits) with d/dlogits scaled by β into the weights (DPO, TPO)."""
    weight = beta * torch.sigmoid(-logits)
    return PairWeights(weight, -weight, -F.logsigmoid(logits), reward_w, reward_l)


@ADVANTAGES.register("dpo")
@dataclass(frozen=True)
class DPOWeights(PairwiseAdvantage):
    """DPO: −log σ(βΔ); c_w = βσ(−βΔ) = −c_l."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        check_beta(self, self.beta)

    def weights(self, pairs: Pairs) -> PairWeights:
        reward_w, reward_l = pairs.implicit_rewards(self.beta)
        return _sigmoid_pair(self.beta, self.beta * pairs.margin, reward_w, reward_l)


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
        return _sigmoid_pair(
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

    def __post_init__(self) -> None:
        check_beta(self, self.beta)
        check_number("TPOLWeights", "gamma", self.gamma)

    def weights(self, pairs: Pairs) -> PairWeights:
        logits = self.beta * (pairs.policy_w - pairs.policy_l) - self.gamma
        return _sigmoid_pair(
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
