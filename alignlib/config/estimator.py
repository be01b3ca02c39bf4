"""The algorithm section → an estimator: a preset with overrides, or named components.

Here, not in the trainer, because validating a config builds it too (a value a component
refuses is one line naming algorithm.params.KEY before anything loads); the config package
depends on the estimator and the presets, never on the trainer.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

from alignlib.algorithms import get as get_preset
from alignlib.config.algorithm import AlgorithmConfig, ComponentSpec
from alignlib.estimator import (
    ADVANTAGES,
    AGGREGATIONS,
    LIKELIHOODS,
    MASKS,
    REFERENCES,
    REGULARIZERS,
    UnifiedEstimator,
)
from alignlib.estimator.pair_options import (
    AlgorithmOptionError,
    length_desensitized,
    wpo_weighted,
)
from alignlib.estimator.registry import RegistryError


def component_spec(spec: str | ComponentSpec) -> tuple[str, dict[str, Any]]:
    return (spec, {}) if isinstance(spec, str) else (spec.name, dict(spec.params))


def build_estimator(config: AlgorithmConfig) -> UnifiedEstimator:
    """A preset with overrides, or an estimator assembled from named components; then the
    pairwise options (LD-DPO's ``ld_alpha``, WPO's weights) and the high-entropy mask when
    set."""
    estimator = _named_or_composed(config)
    if config.adaptive_entropy is not None:
        estimator = with_adaptive_entropy(estimator, config.adaptive_entropy)
    for key, mask in SAMPLE_MASK_OPTIONS.items():
        params = getattr(config, key)
        if params is not None:
            estimator = with_sample_mask(estimator, key, mask, params)
    if config.ld_alpha is not None:
        estimator = length_desensitized(estimator, config.ld_alpha)
    if config.wpo:
        estimator = wpo_weighted(estimator)
    return estimator


def _named_or_composed(config: AlgorithmConfig) -> UnifiedEstimator:
    if config.name is not None:
        return get_preset(config.name, **config.params)
    if config.mix is not None:
        parts = [entry.weight * get_preset(entry.name, **entry.params) for entry in config.mix]
        routing = [e.name for e, part in zip(config.mix, parts, strict=True) if part.router]
        if len(routing) > 1:
            raise AlgorithmOptionError(
                f"algorithm.mix: {routing[0]} and {routing[1]} each decide how rollouts become "
                "training rows, and a mix trains on one set of rows; keep one of them"
            )
        return functools.reduce(operator.add, parts)
    parts = config.components
    assert parts is not None

    def make(registry, spec):  # type: ignore[no-untyped-def]
        name, params = component_spec(spec)
        return registry.build(name, **params)

    return UnifiedEstimator(
        mask=[make(MASKS, m) for m in parts.mask],
        reference=make(REFERENCES, parts.reference),
        advantage=make(ADVANTAGES, parts.advantage),
        likelihood=make(LIKELIHOODS, parts.likelihood),
        aggregation=make(AGGREGATIONS, parts.aggregation),
        regularizers=[make(REGULARIZERS, r) for r in parts.regularizers],
    )


SAMPLE_MASK_OPTIONS = {
    "high_entropy": "high_entropy",
    "off_policy_mask": "off_policy_sequence",
    "second_moment_mask": "second_moment",
}
"""`algorithm:` keys that add a registered mask to every term on rollouts, with its params."""


def with_sample_mask(
    estimator: UnifiedEstimator, key: str, mask: str, params: dict[str, Any]
) -> UnifiedEstimator:
    """``estimator`` with the mask ``mask`` on every term that trains on rollouts; a bad
    parameter, or no such term, is one line naming algorithm.KEY."""
    try:
        return estimator.with_sample_mask(MASKS.build(mask, **params))
    except (RegistryError, ValueError) as exc:
        raise AlgorithmOptionError(f"algorithm.{key}: {exc}") from None


def with_adaptive_entropy(estimator: UnifiedEstimator, params: dict[str, Any]) -> UnifiedEstimator:
    """``estimator`` plus Skywork-OR1's adaptive entropy bonus; a bad parameter is one line
    naming algorithm.adaptive_entropy."""
    try:
        bonus = REGULARIZERS.build("adaptive_entropy", **params)
    except (RegistryError, ValueError) as exc:
        raise AlgorithmOptionError(f"algorithm.adaptive_entropy: {exc}") from None
    return estimator + UnifiedEstimator(terms=[bonus])
