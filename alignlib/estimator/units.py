"""Likelihood components, and the per-unit view of a batch every other component works on.

A *unit* is what π is taken over: one token (``token``) or a whole completion (``sequence-sum``,
``sequence-mean``). A unit's value stands for the sum over the tokens it covers, so aggregation
weights are per row and the same for every likelihood.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import Tensor

from alignlib.estimator.batch import Batch, BatchError, Role
from alignlib.estimator.registry import Registry, check_number


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
    behaviour: Tensor | None = None
    """[R, U] the same under the sampling engine, when the batch has ``behaviour_logprobs``."""


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

    def for_batch(self, batch: Batch) -> Likelihood:
        """This likelihood for ``batch``'s rows (one that reads more than a row's own tokens,
        e.g. its pair partner's length, binds it here); most need nothing."""
        return self


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


@LIKELIHOODS.register("length-desensitized")
@dataclass(frozen=True)
class LengthDesensitized(Likelihood):
    """LD-DPO (Liu et al. 2024, "Length Desensitization in Direct Preference Optimization"):
    the log-likelihood of a pair's response counts its first s tokens whole and the rest
    by α, s = min(|y_w|, |y_l|) the length the pair's two responses share,

        l(y) = Σ_{t ≤ s} ℓ_t + α Σ_{t > s} ℓ_t          (TRL's ``ld_alpha``),

    so the longer response's verbose tail weighs α (1: DPO's sum; 0: the tail not at all).
    ``mean`` divides by |y| (with ``sequence-mean`` methods, IPO). A row outside a pair (a
    demonstration) keeps its plain sum. Reads ``batch.pair_ids``, bound by :meth:`for_batch`.
    """

    per_sequence: ClassVar[bool] = True
    alpha: float = 0.5
    """α, the weight of the tokens beyond the shared length (in [0, 1])."""
    mean: bool = False
    """Divide by the response's length (as ``sequence-mean``)."""
    weights: Tensor | None = field(default=None, repr=False, compare=False)
    """[R, T] the bound batch's token weights (1, or α past the shared length)."""

    def __post_init__(self) -> None:
        check_number("LengthDesensitized", "alpha", self.alpha, ge=0, le=1)

    def for_batch(self, batch: Batch) -> LengthDesensitized:
        return replace(self, weights=shared_length_weights(batch, self.alpha))

    def units(self, logprobs: Tensor, mask: Tensor) -> Tensor:
        if self.weights is None or self.weights.shape != mask.shape:
            raise BatchError(
                "the length-desensitized likelihood reads each pair's shared length: bind it to "
                "the batch first (likelihood.for_batch(batch); the estimator does)"
            )
        total = (_masked(logprobs, mask) * self.weights.to(logprobs.dtype)).sum(-1, keepdim=True)
        return total / mask.sum(-1, keepdim=True).clamp(min=1) if self.mean else total

    def unit_mask(self, mask: Tensor) -> Tensor:
        return (mask.sum(-1, keepdim=True) > 0).to(mask.dtype)


def shared_length_weights(batch: Batch, alpha: float) -> Tensor:
    """[R, T] 1 on each response's first s completion tokens (s: the shorter length of its
    pair's chosen and rejected response) and α after them; 1 on rows outside a pair."""
    mask = batch.mask
    lengths = mask.sum(-1)
    shared = torch.full_like(lengths, float("inf"))
    codes = batch.role_codes()
    paired = (codes == int(Role.CHOSEN)) | (codes == int(Role.REJECTED))
    if batch.pair_ids is not None and bool(paired.any()):
        ids = batch.pair_ids[paired]
        size = int(ids.max()) + 1
        shortest = lengths.new_full((size,), float("inf"))
        shortest = shortest.scatter_reduce(0, ids, lengths[paired], reduce="amin")
        shared[paired] = shortest[ids]
    position = (mask > 0).cumsum(-1).to(lengths.dtype)  # the t of each completion token
    beyond = position > shared.unsqueeze(-1)
    return torch.where(beyond, torch.full_like(mask, alpha), torch.ones_like(mask))
