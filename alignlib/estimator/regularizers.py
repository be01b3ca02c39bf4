"""Regularizers: KL to the reference (k1/k2/k3), entropy bonus, the NLL/SFT term, and a reward
model's score centring."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

from alignlib.estimator.advantages import ConstantAdvantage, group_statistics
from alignlib.estimator.aggregation import (
    Aggregation,
    PairMean,
    SeqMeanTokenMean,
    SeqMeanTokenSum,
    TokenMean,
)
from alignlib.estimator.batch import ALL_ROWS, Batch, BatchError, Role, Rows
from alignlib.estimator.references import CurrentPolicy
from alignlib.estimator.registry import ParameterError, Registry, check_choice, check_number
from alignlib.estimator.term import (
    PolicyGradientTerm,
    Term,
    TermOutput,
    masked_weights,
    take_aggregation_name,
    zero_where_masked,
)
from alignlib.estimator.units import TokenLikelihood

REGULARIZERS: Registry[Term] = Registry("regularizer")


def _kl_estimate(logp: Tensor, ref: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(π‖π_ref) from a sample of π (Schulman's k1, k2, k3)."""
    log_ratio = ref - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    return log_ratio.exp() - log_ratio - 1


@REGULARIZERS.register("kl")
@dataclass(frozen=True)
class KLPenalty(Term):
    """coef · KL(π_θ ‖ π_ref) estimated per token and aggregated like a loss."""

    coef: float = 0.001
    estimator: Literal["k1", "k2", "k3", "k1+", "k3+"] = "k3"
    """k1 = log π/π_ref; k2 = ½(log π/π_ref)²; k3 = π_ref/π − log(π_ref/π) − 1 (GRPO).
    `k1+` / `k3+` (verl's straight-through): the value of k1 / k3 (logged and in the loss), the
    gradient of k2, (log π − log π_ref)·∇log π, whose expectation on π's own samples is the
    gradient of KL(π‖π_ref) (k1's and k3's are not)."""
    rows: Rows = ALL_ROWS
    aggregation: Aggregation = field(default_factory=TokenMean)
    """How the per-token estimates are averaged: an Aggregation or its registered name."""
    name: str = "kl"
    importance_weighted: bool = False
    """DeepSeek-V3.2's unbiased KL estimate (TRL's `use_bias_correction_kl`): each token's
    estimate times ρ = π_θ/π_old (with its gradient; log ρ clamped at ±20), since the tokens
    were sampled from π_old, not π_θ. Needs ``old_logprobs``."""
    to: Literal["ref", "old"] = "ref"
    """The policy compared with: π_ref, or π_old, the policy that sampled (Kimi K2.5's and
    prime-rl's τ·(log π/π_old)², i.e. ``k2`` with coef 2τ, keeps the update near it)."""

    def __post_init__(self) -> None:
        take_aggregation_name(self)
        check_number("KLPenalty", "coef", self.coef, ge=0, why="a negative KL weight rewards drift")
        check_choice("KLPenalty", "estimator", self.estimator, ("k1", "k2", "k3", "k1+", "k3+"))
        check_choice("KLPenalty", "to", self.to, ("ref", "old"))
        if self.importance_weighted and self.straight_through:
            raise ParameterError(
                "KLPenalty",
                "importance_weighted",
                f"and estimator {self.estimator!r} each correct the KL's gradient their own way; "
                "choose one (k3 with importance_weighted is DeepSeek-V3.2's, k3+ verl's)",
            )
        if self.importance_weighted and self.to == "old":
            raise ParameterError(
                "KLPenalty", "importance_weighted", "reweights by π_θ/π_old: it needs to='ref'"
            )

    @property
    def straight_through(self) -> bool:
        """The value of k1 / k3 with the gradient of k2 (``k1+`` / ``k3+``)."""
        return self.estimator.endswith("+")

    def requirements(self) -> dict[str, str]:
        if self.to == "old":
            return {"old_logprobs": f"the KL penalty compares with π_old ({self.name})"}
        needs = {"ref_logprobs": f"the KL penalty compares with the reference policy ({self.name})"}
        if self.importance_weighted:
            needs["old_logprobs"] = f"the importance-weighted KL divides by π_old ({self.name})"
        return needs

    def prepare(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return {"w": masked_weights(batch, self.rows, self.aggregation)[0]}, {}

    def forward(self, batch: Batch, prepared: dict[str, Tensor]) -> TermOutput:
        target = batch.ref_logprobs if self.to == "ref" else batch.old_logprobs
        assert target is not None
        _, mask = masked_weights(batch, self.rows, self.aggregation)
        logp = zero_where_masked(batch.logprobs, mask)
        ref = zero_where_masked(target.detach(), mask)
        estimate = _kl_estimate(logp, ref, self.estimator.removesuffix("+"))
        if self.straight_through:
            k2 = _kl_estimate(logp, ref, "k2")
            estimate = k2 - k2.detach() + estimate.detach()
        if self.importance_weighted:
            assert batch.old_logprobs is not None
            old = zero_where_masked(batch.old_logprobs.detach(), mask)
            estimate = estimate * (logp - old).clamp(-20.0, 20.0).exp()
        kl = (prepared["w"].unsqueeze(-1) * estimate * mask).sum()
        loss = self.coef * kl
        return TermOutput(loss, loss.detach(), {"loss": loss.detach(), "kl": kl.detach()})


def aggregated_entropy(
    batch: Batch, weights: Tensor, rows: Rows, aggregation: Aggregation
) -> Tensor:
    """The policy's entropy over the selected rows' tokens, aggregated with the per-row
    ``weights`` ``prepare`` computed (a token mean by default), with its gradient."""
    assert batch.entropy is not None
    _, mask = masked_weights(batch, rows, aggregation)
    entropy = zero_where_masked(batch.entropy, mask)
    return (weights.unsqueeze(-1) * entropy * mask).sum()


@REGULARIZERS.register("entropy")
@dataclass(frozen=True)
class EntropyBonus(Term):
    """−coef · H: rewards a higher policy entropy (HPT and LUFFY use coef 0.001)."""

    coef: float = 0.001
    rows: Rows = ALL_ROWS
    aggregation: Aggregation = field(default_factory=TokenMean)
    name: str = "entropy"

    def __post_init__(self) -> None:
        take_aggregation_name(self)
        check_number("EntropyBonus", "coef", self.coef)

    def requirements(self) -> dict[str, str]:
        return {"entropy": f"the entropy bonus needs per-token entropy with gradient ({self.name})"}

    def prepare(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return {"w": masked_weights(batch, self.rows, self.aggregation)[0]}, {}

    def forward(self, batch: Batch, prepared: dict[str, Tensor]) -> TermOutput:
        mean = aggregated_entropy(batch, prepared["w"], self.rows, self.aggregation)
        loss = -self.coef * mean
        return TermOutput(loss, loss.detach(), {"loss": loss.detach(), "mean": mean.detach()})


@REGULARIZERS.register("adaptive_entropy")
@dataclass
class AdaptiveEntropyBonus(Term):
    """Skywork-OR1's adaptive entropy control (arXiv 2505.22312, §3.2; TRL's
    ``use_adaptive_entropy``): −c_k·𝟙[H_{k−1} ≤ target]·H, with H the token-mean entropy, and
    after each optimizer step c_{k+1} = c_k + Δ if that step's H ≤ target, else c_k − Δ,
    clipped to [coef_min, coef_max]. The bonus so only acts while entropy sits at or below
    the target and grows while it stays there. The step's H is the term's own logged `mean`
    (summed over micro-batches and data-parallel ranks), handed over by the trainer through
    :meth:`observe`; c and the last H are checkpointed."""

    coef: float = 0.0
    """c₀, the initial coefficient (Skywork-OR1 starts at 0)."""
    target: float = 0.2
    """Target token-mean entropy in nats (Skywork-OR1's and TRL's default): set it near the
    entropy the run starts with (`rollout/entropy`) for the control to engage."""
    delta: float = 0.005
    """Δ, the coefficient's change per optimizer step."""
    coef_min: float = 0.0
    coef_max: float = 1.0
    rows: Rows = ALL_ROWS
    aggregation: Aggregation = field(default_factory=TokenMean)
    name: str = "entropy"
    _current: float | None = field(default=None, init=False, repr=False, compare=False)
    _last_entropy: float = field(default=float("inf"), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        take_aggregation_name(self)
        owner = "AdaptiveEntropyBonus"
        check_number(owner, "target", self.target, ge=0, why="an entropy in nats")
        check_number(owner, "delta", self.delta, ge=0)
        check_number(owner, "coef_min", self.coef_min, ge=0)
        check_number(owner, "coef_max", self.coef_max, ge=self.coef_min, why="above coef_min")
        check_number(owner, "coef", self.coef, ge=self.coef_min, le=self.coef_max)

    @property
    def current(self) -> float:
        """c_k, the coefficient of this step (before its gate)."""
        return self.coef if self._current is None else self._current

    @property
    def applied(self) -> float:
        """c_k·𝟙[H_{k−1} ≤ target], what the loss uses (0 before any step was observed)."""
        return self.current if self._last_entropy <= self.target else 0.0

    def requirements(self) -> dict[str, str]:
        return {"entropy": f"the entropy bonus needs per-token entropy with gradient ({self.name})"}

    def prepare(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        weights, mask = masked_weights(batch, self.rows, self.aggregation)
        tokens = mask.sum(-1)
        return {"w": weights, "share": tokens / tokens.sum().clamp(min=1)}, {}

    def forward(self, batch: Batch, prepared: dict[str, Tensor]) -> TermOutput:
        mean = aggregated_entropy(batch, prepared["w"], self.rows, self.aggregation)
        loss = -self.applied * mean
        # Each micro-batch reports its share of c, so the mini-batch's metric is c itself.
        coef = self.current * prepared["share"].sum()
        return TermOutput(
            loss, loss.detach(), {"loss": loss.detach(), "mean": mean.detach(), "coef": coef}
        )

    def observe(self, metrics: dict[str, float]) -> None:
        """After an optimizer step: move c by ±Δ from the step's entropy ``{name}/mean``."""
        entropy = metrics.get(f"{self.name}/mean")
        if entropy is None:
            return
        step = self.delta if entropy <= self.target else -self.delta
        self._current = min(self.coef_max, max(self.coef_min, self.current + step))
        self._last_entropy = entropy

    def state_dict(self) -> dict[str, float]:
        return {"coef": self.current, "last_entropy": self._last_entropy}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self._current, self._last_entropy = float(state["coef"]), float(state["last_entropy"])


NLL_NORMALIZATIONS: dict[str, Aggregation] = {
    "sum": SeqMeanTokenSum(),
    "seq_mean": SeqMeanTokenMean(),
    "token_mean_batch": TokenMean(),
}


@REGULARIZERS.register("nll")
@dataclass(frozen=True)
class NLL(Term):
    """coef · NLL of the selected rows: the SFT term of RPO, TPO and HPT, as a UPGE term with
    Â = 1 and π_ref = π_θ. The normalization must be explicit because the methods differ:

    - ``sum``: mean over rows of the summed token NLL (official cumulative RPO);
    - ``seq_mean``: mean over rows of the per-row token-mean NLL (RPO average variant);
    - ``token_mean_batch``: Σ NLL / tokens of the selected rows in the mini-batch (TRL's
      ``sft`` loss, TPO's gold term, HPT's SFT rows).
    """

    coef: float = 1.0
    rows: Rows = field(default_factory=lambda: Rows.of(Role.CHOSEN))
    normalization: Literal["sum", "seq_mean", "token_mean_batch"] = "token_mean_batch"
    beta: float | None = None
    """Multiply coef by β as official RPO does (ηβ); None: no scaling."""
    with_prompt: bool = False
    """Count the prompt's tokens too (``batch.prompt_mask``), as ORPO's released code and TRL's
    ``ORPOTrainer`` do; False: the completion's only (the papers' L_SFT of y given x)."""
    name: str = "nll"

    def __post_init__(self) -> None:
        check_number("NLL", "coef", self.coef, ge=0, why="a negative NLL weight unlearns the data")
        check_number("NLL", "beta", self.beta, gt=0, optional=True)
        if self.normalization not in NLL_NORMALIZATIONS:
            raise ValueError(
                f"nll normalization {self.normalization!r} is not one of "
                f"{', '.join(NLL_NORMALIZATIONS)}"
            )

    def as_policy_gradient(self) -> PolicyGradientTerm:
        scale = 1.0 if self.beta is None else self.beta
        return PolicyGradientTerm(
            masks=(),
            reference=CurrentPolicy(),
            advantage=ConstantAdvantage(1.0),
            likelihood=TokenLikelihood(),
            aggregation=NLL_NORMALIZATIONS[self.normalization],
            rows=self.rows,
            coef=self.coef * scale,
            name=self.name,
        )

    def requirements(self) -> dict[str, str]:
        if self.with_prompt:
            return {"prompt_mask": "an NLL with_prompt counts the prompt's tokens"}
        return {}

    def scored(self, batch: Batch) -> Batch:
        """The batch whose mask is the tokens this NLL counts."""
        if not self.with_prompt:
            return batch
        if batch.prompt_mask is None:
            raise BatchError("an NLL with_prompt needs batch.prompt_mask (the prompt's tokens)")
        return batch.replace(mask=batch.mask + batch.prompt_mask)

    def prepare(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return self.as_policy_gradient().prepare(self.scored(batch))

    def forward(self, batch: Batch, prepared: dict[str, Tensor]) -> TermOutput:
        return self.as_policy_gradient().forward(self.scored(batch), prepared)


@REGULARIZERS.register("score_center")
@dataclass(frozen=True)
class ScoreCentering(Term):
    """coef · mean over pairs of (r_w + r_l)²: keeps a reward model's scores centred on 0
    (Eisenstein et al. 2023; TRL's ``center_rewards_coefficient``, whose suggested value is
    0.01). r is each row's sequence sum (the ``score`` likelihood's value)."""

    coef: float = 0.01
    rows: Rows = field(default_factory=lambda: Rows.of(Role.CHOSEN, Role.REJECTED))
    name: str = "center"

    def __post_init__(self) -> None:
        check_number("ScoreCentering", "coef", self.coef, ge=0)

    def requirements(self) -> dict[str, str]:
        return {"pair_ids": f"score centring adds the scores of each pair's rows ({self.name})"}

    def prepare(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return {"w": masked_weights(batch, self.rows, PairMean())[0]}, {}

    def forward(self, batch: Batch, prepared: dict[str, Tensor]) -> TermOutput:
        assert batch.pair_ids is not None
        _, mask = masked_weights(batch, self.rows, PairMean())
        scores = zero_where_masked(batch.logprobs, mask).sum(-1)  # [R]
        pair_sum = group_statistics(scores, batch.pair_ids, self.rows.select(batch))[0]
        chosen = (batch.role_codes() == int(Role.CHOSEN)).to(scores.dtype)
        mean = (prepared["w"] * chosen * pair_sum**2).sum()  # each pair once
        loss = self.coef * mean
        return TermOutput(loss, loss.detach(), {"loss": loss.detach()})
