"""One UPGE term: gradient = mask · (1/π_ref) · Â · ∇π over a selection of rows, aggregated.

Per unit u of row i the surrogate loss is  w_i · (−M_u · Â_u · s(u))  with M (masks) and Â
detached and s the reference's score, so its gradient is −w_i · M · Â · (1/π_ref) · ∇π.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from alignlib.estimator.advantages import Advantage, AdvantageResult
from alignlib.estimator.aggregation import AGGREGATIONS, Aggregation, PairMean
from alignlib.estimator.batch import ALL_ROWS, Batch, Rows
from alignlib.estimator.cov_masks import token_covariance
from alignlib.estimator.masks import Mask, RowFilter, UnitTerms
from alignlib.estimator.references import Reference
from alignlib.estimator.rollout_correction import RolloutCorrection
from alignlib.estimator.units import Likelihood, Units


@dataclass
class TermOutput:
    surrogate: Tensor
    """Scalar whose gradient is the term's gradient."""
    value: Tensor
    """Scalar, detached: the term's loss as the method defines it."""
    metrics: dict[str, Tensor]
    """Detached scalars, normalized over the mini-batch, so they add up over micro-batches."""


class Term(ABC):
    """A summand of the estimator's loss: a UPGE term or a regularizer."""

    name: str
    coef: float

    @abstractmethod
    def requirements(self) -> dict[str, str]:
        """Batch fields this term reads, each with the reason."""

    @abstractmethod
    def prepare(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(per-row tensors, mini-batch metrics) computed once over the whole mini-batch."""

    @abstractmethod
    def forward(self, batch: Batch, prepared: dict[str, Tensor]) -> TermOutput:
        """The term on one (micro-)batch, using the tensors ``prepare`` computed."""

    def row_filters(self) -> list[tuple[RowFilter, Rows]]:
        return []

    def token_filters(self) -> list[tuple[RolloutCorrection, Rows]]:
        """Components that remove single tokens from the batch in ``prepare`` (rejection)."""
        return []

    def scaled(self, factor: float) -> Term:
        return dataclasses.replace(self, coef=self.coef * factor)  # type: ignore[type-var]

    def renamed(self, name: str) -> Term:
        return dataclasses.replace(self, name=name)  # type: ignore[type-var]


def entries_under(prepared: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries whose key starts with ``prefix``, keyed without it."""
    return {k[len(prefix) :]: v for k, v in prepared.items() if k.startswith(prefix)}


def advantage_entries(prepared: dict[str, Tensor]) -> dict[str, Tensor]:
    """A term's prepared entries that hold its stored advantage (see ``_stored``)."""
    return {k: v for k, v in prepared.items() if k.split(".")[0] == "adv"}


def unit_mean_weights(unit_mask: Tensor) -> Tensor:
    """[R] weights averaging a per-unit statistic over every valid unit of the mini-batch."""
    return (unit_mask.sum(-1) > 0).to(unit_mask.dtype) / unit_mask.sum().clamp(min=1)


@dataclass(frozen=True)
class PolicyGradientTerm(Term):
    """The unified policy-gradient estimator on the rows ``rows`` selects."""

    masks: tuple[Mask, ...]
    reference: Reference
    advantage: Advantage
    likelihood: Likelihood
    aggregation: Aggregation
    rows: Rows = ALL_ROWS
    coef: float = 1.0
    name: str = "pg"
    correction: RolloutCorrection | None = None
    """Rollout correction weights on SAMPLE rows (``UnifiedEstimator.with_rollout_correction``)."""

    def requirements(self) -> dict[str, str]:
        needs: dict[str, str] = {}
        parts = (self.reference, self.advantage, *self.masks)
        for part in (*parts, self.correction) if self.correction else parts:
            label = getattr(part, "registered_name", type(part).__name__)
            for key, why in part.requirements().items():
                needs.setdefault(key, f"{why} ({self.name}: {label})")
        return needs

    def row_filters(self) -> list[tuple[RowFilter, Rows]]:
        return [(m, self.rows) for m in self.masks if isinstance(m, RowFilter)]

    def token_filters(self) -> list[tuple[RolloutCorrection, Rows]]:
        if self.correction is not None and self.correction.rejection:
            return [(self.correction, self.rows)]
        return []

    def units(self, batch: Batch, rows: Tensor, detach: bool = False) -> Units:
        logprobs = batch.logprobs.detach() if detach else batch.logprobs
        likelihood = self.likelihood.for_batch(batch)

        def detached(values: Tensor | None) -> Tensor | None:
            return None if values is None else likelihood.units(values.detach(), batch.mask)

        return Units(
            logp=likelihood.units(logprobs, batch.mask),
            old=detached(batch.old_logprobs),
            mask=likelihood.unit_mask(batch.mask) * rows.to(batch.mask.dtype).unsqueeze(-1),
            roles=batch.role_codes(),
            behaviour=detached(batch.behaviour_logprobs),
        )

    def advantages(self, batch: Batch, rows: Tensor) -> AdvantageResult:
        return self.advantage.compute(batch, rows, self.likelihood.for_batch(batch))

    def per_unit(self, values: Tensor) -> Tensor:
        if values.dim() == 1:
            return values.unsqueeze(-1)
        if self.likelihood.per_sequence:
            raise ValueError(
                f"{self.name}: per-token advantages need the 'token' likelihood, not "
                f"{getattr(self.likelihood, 'registered_name', self.likelihood)!r}"
            )
        return values

    def prepare(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        rows = self.rows.select(batch)
        roles = batch.role_codes()
        units = self.units(batch, rows, detach=True)
        prepared = {
            "w_unit": unit_mean_weights(units.mask),
            "w_pair": PairMean().row_weights(batch.mask, rows, roles),
        }
        counted = batch.mask  # the tokens the aggregation's normalizers count
        metrics: dict[str, Tensor] = {}
        if self.correction is not None:
            metrics |= self.correction.statistics(batch, rows)
        needs_adv = not self.advantage.per_call or any(
            type(m).prepare is not Mask.prepare for m in self.masks
        )
        if needs_adv:
            # Over the rollout batch this mini-batch was split from, when the source gave them.
            given = batch.precomputed
            result = _restored(given) if "adv" in given else self.advantages(batch, rows)
            adv = result.values.detach()
            if not self.advantage.per_call:
                prepared |= _stored(result)
            unit_adv = self.per_unit(adv)
            for i, mask in enumerate(self.masks):
                own = mask.prepare(batch, units, unit_adv)
                prepared |= {f"mask{i}.{key}": value for key, value in own.items()}
                narrowed = mask.counted(own)
                if narrowed is not None:
                    counted = counted * narrowed.to(counted.dtype)
            reward_based = bool(self.advantage.requirements().keys() & {"rewards", "advantages"})
            if reward_based and not self.likelihood.per_sequence and bool(units.mask.any()):
                # Cov(log π, Â) drives entropy change (Entropy Mechanism paper): log it always.
                cov = token_covariance(units.logp, unit_adv, units.mask)[units.mask > 0]
                metrics |= {"cov_mean": cov.mean(), "cov_max": cov.max(), "cov_min": cov.min()}
        prepared["w"] = self.aggregation.row_weights(counted, rows, roles)
        return prepared, metrics

    def forward(self, batch: Batch, prepared: dict[str, Tensor]) -> TermOutput:
        rows = self.rows.select(batch)
        units = self.units(batch, rows)
        result = self.advantages(batch, rows) if self.advantage.per_call else _restored(prepared)
        adv = self.per_unit(result.values.to(units.logp.dtype))
        score = self.reference.score(units)
        terms = UnitTerms(weight=units.mask, value=(-adv * score).detach() * units.mask)
        for i, mask in enumerate(self.masks):
            terms = mask.apply(units, adv, terms, entries_under(prepared, f"mask{i}."))
        if self.correction is not None:
            self.correction.apply(batch, rows, self.likelihood.per_sequence, terms)
        weights = prepared["w"].unsqueeze(-1)
        per_unit = -terms.weight * adv * score
        if terms.penalty is not None:
            per_unit = per_unit + terms.penalty * units.mask
        surrogate = self.coef * (weights * per_unit).sum()
        if result.row_loss is not None:
            value = self.coef * (prepared["w"] * result.row_loss).sum()
        else:
            value = self.coef * (weights * terms.value).sum()
        metrics = {"loss": value.detach()}
        w_unit = prepared["w_unit"].unsqueeze(-1)
        for key, indicator in terms.indicators.items():
            metrics[key] = (w_unit * indicator * units.mask).sum().detach()
        stat_weights = {"pair": prepared["w_pair"], "summed": 1.0, "unit": prepared["w_unit"]}[
            self.advantage.metric_weights
        ]
        for key, stat in result.row_metrics.items():
            metrics[key] = (stat_weights * stat).sum().detach()
        return TermOutput(surrogate, value.detach(), metrics)


def _stored(result: AdvantageResult) -> dict[str, Tensor]:
    """A once-per-mini-batch advantage as ``prepared`` entries (sliced with each micro-batch)."""
    stored = {"adv": result.values.detach()}
    if result.row_loss is not None:
        stored["adv.row_loss"] = result.row_loss.detach()
    return stored | {f"adv.stat.{k}": v.detach() for k, v in result.row_metrics.items()}


def _restored(prepared: dict[str, Tensor]) -> AdvantageResult:
    stats = {
        k.removeprefix("adv.stat."): v for k, v in prepared.items() if k.startswith("adv.stat.")
    }
    return AdvantageResult(prepared["adv"], prepared.get("adv.row_loss"), stats)


def take_aggregation_name(term: object) -> None:
    """Let a regularizer (a frozen dataclass) take its ``aggregation`` by registered name
    ("seq-mean-token-mean"), as UnifiedEstimator does; an unknown name lists the valid ones.
    For ``__post_init__``."""
    name = getattr(term, "aggregation", None)
    if isinstance(name, str):
        object.__setattr__(term, "aggregation", AGGREGATIONS.resolve(name))


def masked_weights(batch: Batch, rows: Rows, aggregation: Aggregation) -> tuple[Tensor, Tensor]:
    """(per-row aggregation weights, [R, T] mask of the selected rows) for token regularizers."""
    selected = rows.select(batch)
    weights = aggregation.row_weights(batch.mask, selected, batch.role_codes())
    return weights, batch.mask * selected.to(batch.mask.dtype).unsqueeze(-1)


def zero_where_masked(values: Tensor, mask: Tensor) -> Tensor:
    return values.where(mask > 0, torch.zeros((), dtype=values.dtype, device=values.device))
