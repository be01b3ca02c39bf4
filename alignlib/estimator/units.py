"""Likelihood components, and the per-unit view of a batch every other component works on.

A *unit* is what π is taken over: one token (``token``) or a whole completion (``sequence-sum``,
``sequence-mean``). A unit's value stands for the sum over the tokens it covers, so aggregation
weights are per row and the same for every likelihood.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from alignlib.estimator.registry import Registry


@dataclass
class Units:
    """The batch seen at the granularity of the likelihood component."""

    logp: Tensor
    """[R, U] log-likelihood of each unit under π_θ (with gradient)."""
    old: Tensor | None
    """[R, U] the same under the behaviour policy, when the batch has ``old_logprobs``."""
    mask: Tensor
    """[R, U] 1 on valid units of the term's rows."""
    roles: Tensor
    """[R] row roles."""


class Likelihood(ABC):
    """How per-token log-probs combine into the log-likelihood of a unit."""

    per_sequence: ClassVar[bool]
    scalar_head: ClassVar[bool] = False
    """The model is a one-output sequence scorer (a reward model), not a language model: the
    trainer puts each row's score where its last token's log-prob would be."""

    @abstractmethod
    def units(self, logprobs: Tensor, mask: Tensor) -> Tensor:
        """[R, U] unit log-likelihoods; invalid positions are exactly zero (never NaN)."""

    @abstractmethod
    def unit_mask(self, mask: Tensor) -> Tensor:
        """[R, U] 1 on valid units."""

    def sequence(self, logprobs: Tensor, mask: Tensor) -> Tensor:
        """[R] the completion's log-likelihood as preference margins use it."""
        units = self.units(logprobs, mask)
        return units.sum(-1)


LIKELIHOODS: Registry[Likelihood] = Registry("likelihood")


def _masked(logprobs: Tensor, mask: Tensor) -> Tensor:
    # where() rather than multiply: padding may hold -inf or NaN, and NaN * 0 is NaN.
    return logprobs.where(mask > 0, logprobs.new_zeros(()))


@LIKELIHOODS.register("token")
@dataclass(frozen=True)
class TokenLikelihood(Likelihood):
    """Per-token units: ∇π is taken token by token (PPO, GRPO, SFT)."""

    per_sequence: ClassVar[bool] = False

    def units(self, logprobs: Tensor, mask: Tensor) -> Tensor:
        return _masked(logprobs, mask)

    def unit_mask(self, mask: Tensor) -> Tensor:
        return mask


@LIKELIHOODS.register("sequence-sum")
@dataclass(frozen=True)
class SequenceSum(Likelihood):
    """One unit per completion with l(y) = Σ_t ℓ_t (DPO, RPO, TPO, INPO)."""

    per_sequence: ClassVar[bool] = True

    def units(self, logprobs: Tensor, mask: Tensor) -> Tensor:
        return _masked(logprobs, mask).sum(-1, keepdim=True)

    def unit_mask(self, mask: Tensor) -> Tensor:
        return (mask.sum(-1, keepdim=True) > 0).to(mask.dtype)


@LIKELIHOODS.register("score")
@dataclass(frozen=True)
class SequenceScore(SequenceSum):
    """One unit per completion whose value is a scalar head's score r(x, y) instead of a
    log-likelihood (a Bradley-Terry reward model): the trainer loads the model with a
    one-output head and writes r at each row's last token, 0 on its other tokens, so the
    sequence sum is r."""

    scalar_head: ClassVar[bool] = True


@LIKELIHOODS.register("sequence-mean")
@dataclass(frozen=True)
class SequenceMean(Likelihood):
    """One unit per completion with the length-normalized l̄(y) = l(y)/|y| (IPO, TPO-L)."""

    per_sequence: ClassVar[bool] = True

    def units(self, logprobs: Tensor, mask: Tensor) -> Tensor:
        total = _masked(logprobs, mask).sum(-1, keepdim=True)
        return total / mask.sum(-1, keepdim=True).clamp(min=1)

    def unit_mask(self, mask: Tensor) -> Tensor:
        return (mask.sum(-1, keepdim=True) > 0).to(mask.dtype)


@LIKELIHOODS.register("sequence-mean-token")
@dataclass(frozen=True)
class SequenceMeanPerToken(Likelihood):
    """Per-token units whose value is the sequence mean l̄(y) and whose gradient is ∇ℓ_t:
    u_t = sg[l̄] + ℓ_t − sg[ℓ_t] (GSPO-token). With the ``old`` reference the score is
    s_i,t = sg[s_i]·π_t/sg[π_t], s_i = exp(l̄ − l̄_old) the length-normalized sequence ratio;
    under seq-mean-token-mean this is GSPO's gradient exactly when Â is per sequence, while
    per-token weights (rollout correction, per-token Â) still apply token by token."""

    per_sequence: ClassVar[bool] = False

    def units(self, logprobs: Tensor, mask: Tensor) -> Tensor:
        tokens = _masked(logprobs, mask)
        mean = tokens.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
        return _masked(mean.detach() + tokens - tokens.detach(), mask)

    def unit_mask(self, mask: Tensor) -> Tensor:
        return mask
