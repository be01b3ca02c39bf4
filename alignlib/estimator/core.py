"""UnifiedEstimator: a sum of UPGE terms and regularizers, each normalized over the mini-batch."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import Tensor

from alignlib.estimator.advantages import ADVANTAGES, Advantage
from alignlib.estimator.aggregation import AGGREGATIONS, Aggregation
from alignlib.estimator.batch import ALL_ROWS, Batch, BatchError, Role, Rows
from alignlib.estimator.critic import ValueLoss
from alignlib.estimator.masks import MASKS, Mask
from alignlib.estimator.queries import EstimatorQueries
from alignlib.estimator.references import REFERENCES, Reference
from alignlib.estimator.regularizers import REGULARIZERS
from alignlib.estimator.rollout_correction import RolloutCorrection
from alignlib.estimator.routing import Router
from alignlib.estimator.term import PolicyGradientTerm, Term, advantage_entries, entries_under
from alignlib.estimator.units import LIKELIHOODS, Likelihood


class EstimatorInputError(ValueError):
    """The batch lacks a field some component needs (the message names both)."""


@dataclass
class EstimatorOutput:
    loss: Tensor
    """Scalar: its value is the method's own loss, its gradient the UPGE gradient."""
    metrics: dict[str, Tensor]
    """Detached scalars. Per-call metrics are normalized over the mini-batch, so summing them
    over micro-batches gives the mini-batch value; ``prepare`` metrics are reported once."""


MaskSpec = Mask | str | Sequence[Mask | str] | None


def _masks(spec: MaskSpec) -> tuple[Mask, ...]:
    if spec is None:
        return ()
    if isinstance(spec, (str, Mask)):
        spec = [spec]
    return tuple(MASKS.resolve(m) for m in spec)


class UnifiedEstimator(EstimatorQueries):
    """gradient = mask · (1/π_ref) · Â · ∇π, aggregated, plus regularizers.

    Components are instances or registered names (built with their defaults)::

        UnifiedEstimator(mask="ppo_clip", reference="old", advantage="grpo",
                         likelihood="token", aggregation="token-mean")

    Estimators add and scale: ``0.5 * a + b`` sums their terms, which is how mixtures
    (BVPO, HPT) are written. ``estimator(batch)`` returns an :class:`EstimatorOutput`.
    """

    def __init__(
        self,
        mask: MaskSpec = None,
        reference: Reference | str = "current",
        advantage: Advantage | str = "constant",
        likelihood: Likelihood | str = "token",
        aggregation: Aggregation | str = "token-mean",
        regularizers: Iterable[Term | str] | Term | str = (),
        rows: Rows = ALL_ROWS,
        coef: float = 1.0,
        name: str = "pg",
        *,
        terms: Sequence[Term] | None = None,
        router: Router | None = None,
        value_loss: ValueLoss | None = None,
    ) -> None:
        if terms is None:
            terms = [
                PolicyGradientTerm(
                    masks=_masks(mask),
                    reference=REFERENCES.resolve(reference),
                    advantage=ADVANTAGES.resolve(advantage),
                    likelihood=LIKELIHOODS.resolve(likelihood),
                    aggregation=AGGREGATIONS.resolve(aggregation),
                    rows=rows,
                    coef=coef,
                    name=name,
                )
            ]
        if isinstance(regularizers, (str, Term)):  # one regularizer, as ``mask`` takes one
            regularizers = [regularizers]
        all_terms = [*terms, *(REGULARIZERS.resolve(r) for r in regularizers)]
        self.terms: list[Term] = _unique_names(all_terms)
        self.router = router
        """The preset's data side online (HPT's gate, LUFFY's demonstrations): how rollouts
        become training rows (``alignlib.estimator.routing``); None keeps every rollout."""
        self.value_loss = value_loss
        """How a critic is trained beside the policy when an advantage reads its values (GAE);
        None: :class:`ValueLoss`'s defaults."""

    def _like(self, terms: Sequence[Term], router: Router | None) -> UnifiedEstimator:
        """An estimator of ``terms`` that keeps this one's critic loss."""
        return UnifiedEstimator(terms=terms, router=router, value_loss=self.value_loss)

    @classmethod
    def from_terms(cls, *terms: Term) -> UnifiedEstimator:
        return cls(terms=terms)

    def with_terms(self, terms: Sequence[Term]) -> UnifiedEstimator:
        """The same estimator (router, critic loss) with ``terms`` instead of its own."""
        return self._like(terms, self.router)

    def with_router(self, router: Router | None) -> UnifiedEstimator:
        """The same terms, with ``router`` building the training rows online."""
        return self._like(self.terms, router)

    def __add__(self, other: UnifiedEstimator) -> UnifiedEstimator:
        router = self.router if other.router is None else other.router
        if self.router is not None and other.router is not None and self.router != other.router:
            raise ValueError(
                "both estimators of the sum route rows (router): a mixture has one data side; "
                "keep one with .with_router(...)"
            )
        if None not in (self.value_loss, other.value_loss) and self.value_loss != other.value_loss:
            raise ValueError("both estimators of the sum set a critic loss (value_loss); keep one")
        value_loss = self.value_loss if other.value_loss is None else other.value_loss
        return UnifiedEstimator(
            terms=[*self.terms, *other.terms], router=router, value_loss=value_loss
        )

    def __mul__(self, factor: float) -> UnifiedEstimator:
        return self._like([t.scaled(factor) for t in self.terms], self.router)

    __rmul__ = __mul__

    def renamed(self, name: str) -> UnifiedEstimator:
        """The same estimator with its terms' metrics under ``name`` (for mixtures)."""
        return self._like([t.renamed(name) for t in self.terms], self.router)

    def __repr__(self) -> str:
        return "UnifiedEstimator(\n" + "".join(f"  {t!r},\n" for t in self.terms) + ")"

    def check(self, batch: Batch) -> None:
        """Raise one clear error per missing batch field."""
        for key, why in self.requirements().items():
            if getattr(batch, key) is None:
                raise EstimatorInputError(f"batch.{key} is missing: {why}")

    def prepare(self, batch: Batch) -> Batch:
        """Compute everything that must see the whole optimizer mini-batch (row filters,
        reward advantages, normalizers, Clip-Cov/KL-Cov selections) before micro-batching.

        The returned batch can be ``split`` and each micro-batch passed to the estimator,
        with its live log-probs, to get exactly the mini-batch's gradient.
        """
        self.check(batch)
        mask = batch.mask
        metrics: dict[str, Tensor] = {}
        for term in self.terms:
            for row_filter, rows in term.row_filters():
                selected = rows.select(batch)
                kept = row_filter.keep(batch, selected)
                dropped = (selected & ~kept).to(mask.dtype)
                metrics[f"{term.name}/filtered_frac"] = dropped.sum() / selected.sum().clamp(min=1)
                mask = mask * (1 - dropped).unsqueeze(-1)
        batch = batch.replace(mask=mask, prepared={}, prepared_metrics={})
        batch, rejected = self._reject_tokens(batch)
        metrics |= rejected
        prepared: dict[str, Tensor] = {}
        for index, term in enumerate(self.terms):
            # Each term sees its own precomputed entries (its advantages over a rollout batch).
            own = entries_under(batch.precomputed, f"{index}.")
            tensors, term_metrics = term.prepare(batch.replace(precomputed=own))
            prepared |= {f"{index}.{key}": value for key, value in tensors.items()}
            metrics |= {f"{term.name}/{key}": value.detach() for key, value in term_metrics.items()}
        return batch.replace(prepared=prepared, prepared_metrics=metrics, was_prepared=True)

    def precompute(self, batch: Batch) -> dict[str, Tensor]:
        """Each term's advantages over every row of ``batch``, a rollout batch that a source
        then splits into several optimizer mini-batches (keyed as ``prepare`` keys them).

        Handed back with each mini-batch (``Batch.precomputed``, sliced to its rows), they take
        the place of the advantages the term would compute over the mini-batch alone: a
        statistic across groups (Lite PPO's batch std, RLOO's and GDPO's normalization,
        REINFORCE++'s and GAE's whitening) then spans the whole rollout batch, as TRL's
        generation batch and verl's ``compute_advantage`` take it. Group statistics are the
        same either way (mini-batches hold whole groups). ``batch.logprobs`` is not read: an
        advantage computed from the present log-probs (KTO) is left to each mini-batch."""
        prepared = self.prepare(batch.replace(precomputed={})).prepared
        kept: dict[str, Tensor] = {}
        for index, term in enumerate(self.terms):
            if isinstance(term, PolicyGradientTerm) and term.advantage.reads_logprobs:
                continue
            own = entries_under(prepared, f"{index}.")
            kept |= {f"{index}.{key}": value for key, value in advantage_entries(own).items()}
        return kept

    def _reject_tokens(self, batch: Batch) -> tuple[Batch, dict[str, Tensor]]:
        """Remove the tokens a rollout correction with ``rejection`` masks from the batch mask,
        so they leave every loss and every normalizer."""
        metrics: dict[str, Tensor] = {}
        for term in self.terms:
            for token_filter, rows in term.token_filters():
                selected = rows.select(batch)
                count = (batch.mask * selected.to(batch.mask.dtype).unsqueeze(-1)).sum()
                dropped = token_filter.rejected(batch, selected).to(batch.mask.dtype)
                metrics[f"{term.name}/rollout_rejected_frac"] = dropped.sum() / count.clamp(min=1)
                batch = batch.replace(mask=batch.mask * (1 - dropped))
        return batch, metrics

    def with_rollout_correction(self, correction: RolloutCorrection | None) -> UnifiedEstimator:
        """The same estimator with ``correction`` weighing the policy loss of every
        policy-gradient term that can train on SAMPLE rows (None: unchanged). Regularizers
        (KL, entropy, NLL) are not weighted."""
        if correction is None:
            return self
        for term in self.terms:
            for mask in getattr(term, "masks", ()):
                if mask.folds_behaviour:
                    raise ValueError(
                        f"term {term.name!r}: {type(mask).__name__} already weighs the loss "
                        "by the ratio to the sampling engine's log-probs (as its reference code "
                        "folds the correction in); remove online.rollout_correction"
                    )
        terms = [
            dataclasses.replace(t, correction=correction) if _trains_on_samples(t) else t
            for t in self.terms
        ]
        return self._like(terms, self.router)

    def with_sample_mask(self, mask: Mask) -> UnifiedEstimator:
        """The same estimator with ``mask`` added after the masks of every policy-gradient
        term that can train on SAMPLE rows (the high-entropy mask on any online preset); a
        term on demonstrations only (HPT's SFT rows) is left as it is."""
        for term in self.terms:
            if mask.token_level and _trains_on_samples(term) and term.likelihood.per_sequence:
                raise ValueError(
                    f"{type(mask).__name__} selects single tokens and term {term.name!r} scores "
                    f"whole sequences ({getattr(term.likelihood, 'registered_name', '?')!r} "
                    "likelihood); use it with a per-token method"
                )
        if not any(_trains_on_samples(t) for t in self.terms):
            raise ValueError(
                f"{type(mask).__name__}: none of this estimator's terms "
                f"({', '.join(t.name for t in self.terms)}) is a policy-gradient term that "
                "trains on sampled rows, so there is nothing to add it to"
            )
        terms = [
            dataclasses.replace(t, masks=(*t.masks, mask)) if _trains_on_samples(t) else t
            for t in self.terms
        ]
        return self._like(terms, self.router)

    def __call__(self, batch: Batch) -> EstimatorOutput:
        """The loss of one mini-batch, or of one micro-batch of a prepared mini-batch."""
        first_call = not batch.is_prepared
        if batch.unprepared_part and first_call:
            raise BatchError(
                "this micro-batch was split off a mini-batch that was never prepared, so its "
                "normalizers and group advantages would be its own (k micro-batches: k times "
                "the gradient); split the prepared one: estimator.prepare(minibatch).split(k)"
            )
        if first_call:
            batch = self.prepare(batch)
        surrogate: Tensor | float = 0.0
        value: Tensor | float = 0.0
        metrics: dict[str, Tensor] = dict(batch.prepared_metrics) if first_call else {}
        for index, term in enumerate(self.terms):
            own = entries_under(batch.prepared, f"{index}.")
            out = term.forward(batch, own)
            surrogate = surrogate + out.surrogate
            value = value + out.value
            metrics |= {f"{term.name}/{key}": v for key, v in out.metrics.items()}
        assert isinstance(surrogate, Tensor) and isinstance(value, Tensor)
        # The value is the method's loss; the gradient is the surrogate's (UPGE).
        loss = value.detach() + (surrogate - surrogate.detach())
        metrics["loss"] = value.detach()
        return EstimatorOutput(loss, metrics)

    def observe(self, metrics: dict[str, float]) -> None:
        """After each optimizer step, with the step's metrics (summed over micro-batches and
        ranks): components that adapt between steps (adaptive entropy control) update."""
        for term in self.terms:
            if hasattr(term, "observe"):
                term.observe(metrics)

    def state_dict(self) -> dict[str, object]:
        """Random-generator states of stochastic masks (Clip-Cov) and adaptive terms'
        coefficients, for exact resume."""
        state: dict[str, object] = {}
        for index, term in enumerate(self.terms):
            if hasattr(term, "state_dict"):
                state[f"{index}.term"] = term.state_dict()
            for m_index, mask in enumerate(getattr(term, "masks", ())):
                if hasattr(mask, "state_dict"):
                    state[f"{index}.mask{m_index}"] = mask.state_dict()
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        for index, term in enumerate(self.terms):
            if f"{index}.term" in state and hasattr(term, "load_state_dict"):
                term.load_state_dict(state[f"{index}.term"])
            for m_index, mask in enumerate(getattr(term, "masks", ())):
                key = f"{index}.mask{m_index}"
                if key in state and hasattr(mask, "load_state_dict"):
                    mask.load_state_dict(state[key])


def _trains_on_samples(term: Term) -> bool:
    """A policy-gradient term whose rows can include the policy's own samples."""
    return isinstance(term, PolicyGradientTerm) and (
        term.rows.roles is None or Role.SAMPLE in term.rows.roles
    )


def _unique_names(terms: list[Term]) -> list[Term]:
    """Give every term a distinct metric prefix (pg, pg_2, ...)."""
    seen: dict[str, int] = {}
    result = []
    for term in terms:
        seen[term.name] = seen.get(term.name, 0) + 1
        result.append(
            term if seen[term.name] == 1 else term.renamed(f"{term.name}_{seen[term.name]}")
        )
    return result
