"""Two options TRL's DPOTrainer offers every pairwise loss, as transforms of an estimator's
preference-pair terms: LD-DPO's length desensitization (``ld_alpha``; the likelihood becomes
:class:`~alignlib.estimator.units.LengthDesensitized`) and WPO's weighting (``use_weighting``;
the pair weights are wrapped in :class:`WPOWeighted`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from alignlib.estimator.advantages import AdvantageResult
from alignlib.estimator.batch import Batch
from alignlib.estimator.core import UnifiedEstimator
from alignlib.estimator.dpo_losses import AOTWeights
from alignlib.estimator.preferences import Pairs, PairWeights, PairwiseAdvantage, pair_rows
from alignlib.estimator.term import PolicyGradientTerm
from alignlib.estimator.units import LengthDesensitized, Likelihood, SequenceMean, SequenceSum


class AlgorithmOptionError(ValueError):
    """An `algorithm:` option (LD-DPO, WPO, the high-entropy mask) set for an estimator it
    cannot apply to, or with a value it refuses (the message names the key)."""


@dataclass(frozen=True)
class WPOWeighted(PairwiseAdvantage):
    """WPO (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization",
    eq. 2): each pair's loss, and so its weights c_w and c_l, times w(y_w)·w(y_l) with

        w(y) = exp( mean_t [ log π(y_t | x, y_<t) − log Σ_v π(v | x, y_<t)² ] ),

    the present policy's length-normalized probability of the response, aligned by each
    position's collision probability; no gradient flows through w (TRL's ``use_weighting``,
    unclamped). ``inner``: the pairwise loss it weights."""

    inner: PairwiseAdvantage

    def requirements(self) -> dict[str, str]:
        why = "WPO's weights align each token's probability by log Σ_v π(v)² at its position"
        return self.inner.requirements() | {"log_sum_sq_probs": why}

    def weights(self, pairs: Pairs) -> PairWeights:
        return self.inner.weights(pairs)

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        result = super().compute(batch, rows, likelihood)
        assert batch.log_sum_sq_probs is not None and result.row_loss is not None
        aligned = batch.logprobs.detach() - batch.log_sum_sq_probs.to(batch.logprobs.dtype)
        mask = batch.mask.to(aligned.dtype)
        w = torch.exp((aligned * mask).sum(-1) / mask.sum(-1).clamp(min=1))
        chosen, rejected = pair_rows(batch, rows)
        pair = w[chosen] * w[rejected]
        factor = torch.zeros_like(w)
        factor[chosen], factor[rejected] = pair, pair
        metrics = dict(result.row_metrics)
        metrics["wpo_weight"] = torch.zeros_like(w).index_copy(0, chosen, pair)
        return AdvantageResult(result.values * factor, result.row_loss * factor, metrics)


def _pair_terms(estimator: UnifiedEstimator, option: str) -> list[int]:
    """Indices of the preference-pair terms ``option`` applies to; one line when none."""
    found = [
        i
        for i, term in enumerate(estimator.terms)
        if isinstance(term, PolicyGradientTerm) and isinstance(term.advantage, PairwiseAdvantage)
    ]
    if not found:
        raise AlgorithmOptionError(
            f"{option}: applies to preference-pair losses (the DPO family), and this algorithm "
            "has none; remove it"
        )
    return found


def length_desensitized(estimator: UnifiedEstimator, alpha: float) -> UnifiedEstimator:
    """The estimator with LD-DPO's likelihood (weight ``alpha`` past each pair's shared
    length) in every preference-pair term: summed or length-averaged as the term's was."""
    terms = list(estimator.terms)
    for index in _pair_terms(estimator, "algorithm.ld_alpha"):
        term = terms[index]
        assert isinstance(term, PolicyGradientTerm)
        if type(term.likelihood) not in (SequenceSum, SequenceMean):
            raise AlgorithmOptionError(
                f"algorithm.ld_alpha: term {term.name!r} scores a completion by "
                f"{getattr(term.likelihood, 'registered_name', term.likelihood)!r}; LD-DPO "
                "reweights a summed (or length-averaged) log-likelihood"
            )
        mean = isinstance(term.likelihood, SequenceMean)
        likelihood = LengthDesensitized(alpha=alpha, mean=mean)
        terms[index] = dataclasses.replace(term, likelihood=likelihood)
    return estimator.with_terms(terms)


def wpo_weighted(estimator: UnifiedEstimator) -> UnifiedEstimator:
    """The estimator with WPO's weights on every preference-pair term."""
    terms = list(estimator.terms)
    for index in _pair_terms(estimator, "algorithm.wpo"):
        term = terms[index]
        assert isinstance(term, PolicyGradientTerm)
        if isinstance(term.advantage, AOTWeights):
            raise AlgorithmOptionError(
                "algorithm.wpo: AOT sorts margins across the mini-batch, so a pair has no loss "
                "of its own to weight (TRL refuses use_weighting with aot too)"
            )
        advantage = WPOWeighted(inner=term.advantage)  # type: ignore[arg-type]
        terms[index] = dataclasses.replace(term, advantage=advantage)
    return estimator.with_terms(terms)
