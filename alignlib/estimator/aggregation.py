"""Loss aggregation: per-row normalizer weights, computed once over the whole mini-batch.

A term's loss is Σ_i w_i Σ_u loss_{i,u}. Because w is computed from the *mini-batch's* counts
before it is split, summing micro-batch losses gives the mini-batch loss exactly, and the
gradient does not depend on the micro-batch size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import Tensor

from alignlib.estimator.batch import Role
from alignlib.estimator.registry import Registry, check_number


class Aggregation(ABC):
    """Maps the completion mask of the selected rows to one normalizer weight per row."""

    @abstractmethod
    def row_weights(self, mask: Tensor, rows: Tensor, roles: Tensor) -> Tensor:
        """[R] weight of each row; 0 for rows outside ``rows`` and for rows with no tokens."""


AGGREGATIONS: Registry[Aggregation] = Registry("aggregation")


def _valid_rows(mask: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    lengths = mask.sum(-1) * rows.to(mask.dtype)
    return lengths, (lengths > 0).to(mask.dtype)


def _inverse(count: Tensor) -> Tensor:
    # An empty selection contributes nothing rather than dividing by zero.
    return 1.0 / count.clamp(min=1)


@AGGREGATIONS.register("token-mean")
@dataclass(frozen=True)
class TokenMean(Aggregation):
    """Σ over all tokens / number of tokens in the mini-batch (DAPO's token-level loss)."""

    def row_weights(self, mask: Tensor, rows: Tensor, roles: Tensor) -> Tensor:
        lengths, valid = _valid_rows(mask, rows)
        return valid * _inverse(lengths.sum())


@AGGREGATIONS.register("seq-mean-token-sum")
@dataclass(frozen=True)
class SeqMeanTokenSum(Aggregation):
    """Per-sequence token sum, averaged over the non-empty sequences."""

    def row_weights(self, mask: Tensor, rows: Tensor, roles: Tensor) -> Tensor:
        _, valid = _valid_rows(mask, rows)
        return valid * _inverse(valid.sum())


@AGGREGATIONS.register("seq-mean-token-mean")
@dataclass(frozen=True)
class SeqMeanTokenMean(Aggregation):
    """Per-sequence token mean, averaged over the non-empty sequences (GRPO paper)."""

    def row_weights(self, mask: Tensor, rows: Tensor, roles: Tensor) -> Tensor:
        lengths, valid = _valid_rows(mask, rows)
        return valid * _inverse(valid.sum()) * _inverse(lengths)


@AGGREGATIONS.register("seq-mean-token-sum-norm")
@dataclass(frozen=True)
class SeqMeanTokenSumNorm(Aggregation):
    """Σ over all tokens / a constant L (Dr. GRPO as in verl and the HPT code).

    TRL's ``dr_grpo`` divides by B·L instead: set ``constant`` to that product for parity.
    """

    constant: float | None = None
    """The divisor L; None uses the padded response width of the mini-batch."""

    def __post_init__(self) -> None:
        check_number("SeqMeanTokenSumNorm", "constant", self.constant, gt=0, optional=True)

    def row_weights(self, mask: Tensor, rows: Tensor, roles: Tensor) -> Tensor:
        _, valid = _valid_rows(mask, rows)
        divisor = float(mask.shape[-1]) if self.constant is None else self.constant
        return valid / divisor


@AGGREGATIONS.register("pair-mean")
@dataclass(frozen=True)
class PairMean(Aggregation):
    """Σ over the tokens of both rows of each pair / number of pairs (the DPO family's mean)."""

    def row_weights(self, mask: Tensor, rows: Tensor, roles: Tensor) -> Tensor:
        _, valid = _valid_rows(mask, rows)
        num_pairs = ((roles == int(Role.CHOSEN)).to(mask.dtype) * rows.to(mask.dtype)).sum()
        return valid * _inverse(num_pairs)
