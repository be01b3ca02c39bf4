"""The preset registry: an algorithm is a named function returning a ready UnifiedEstimator."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from alignlib.estimator import (
    Advantage,
    Aggregation,
    KLPenalty,
    Registry,
    RegistryError,
    Role,
    Rows,
    Term,
    UnifiedEstimator,
)
from alignlib.suggest import did_you_mean

Preset = Callable[..., UnifiedEstimator]

PRESETS: Registry[Any] = Registry("algorithm")

PAIR_ROWS = Rows.of(Role.CHOSEN, Role.REJECTED)
"""The rows a pairwise preference term trains on (gold/demonstration rows excluded)."""


def pairwise(weights: Advantage, name: str, likelihood: str = "sequence-sum") -> UnifiedEstimator:
    """One pairwise preference term, the DPO family's shape: closed-form weights on the chosen
    and rejected rows' sequence log-likelihoods (summed, or ``sequence-mean``), a mean over
    pairs."""
    return UnifiedEstimator(
        advantage=weights, likelihood=likelihood, aggregation="pair-mean", rows=PAIR_ROWS, name=name
    )


def kl_regularizers(
    coef: float, estimator: str, aggregation: Aggregation, importance_weighted: bool = False
) -> list[Term]:
    """GRPO's KL penalty to π_ref (none at coef 0), aggregated exactly like the clipped term
    (with a per-sequence mean, inside each sequence's token mean, as DeepSeekMath eq. 3);
    ``importance_weighted``: DeepSeek-V3.2's unbiased estimate (each token's times π_θ/π_old)."""
    if not coef:
        return []
    kl = KLPenalty(
        coef=coef,
        estimator=estimator,  # type: ignore[arg-type]
        aggregation=aggregation,
        importance_weighted=importance_weighted,
    )
    return [kl]


def preset(name: str) -> Callable[[Preset], Preset]:
    """Register a preset function under ``name`` (its keyword defaults are the paper's)."""
    return PRESETS.register(name)


def available() -> list[str]:
    """Names of every registered algorithm."""
    return PRESETS.names()


def parameters(name: str) -> dict[str, Any]:
    """The preset's hyperparameters and their defaults."""
    signature = inspect.signature(PRESETS.get(name))
    return {key: p.default for key, p in signature.parameters.items()}


def get(name: str, **overrides: Any) -> UnifiedEstimator:
    """A ready estimator for ``name`` with the paper's defaults, updated by ``overrides``."""
    valid = parameters(name)
    for key in overrides:
        if key not in valid:
            raise RegistryError(
                f"algorithm {name!r} has no parameter {key!r}{did_you_mean(key, valid)}; "
                f"valid: {', '.join(valid) or '(none)'}"
            )
    return PRESETS.get(name)(**overrides)


def source(name: str) -> str:
    """The docstring of the preset's module: the method, its paper and what it was checked
    against."""
    module = inspect.getmodule(PRESETS.get(name))
    return inspect.cleandoc(module.__doc__ or "") if module is not None else ""


def describe(name: str) -> str:
    """The preset's docstring followed by its defaults."""
    doc = inspect.getdoc(PRESETS.get(name)) or ""
    defaults = ", ".join(f"{k}={v!r}" for k, v in parameters(name).items())
    return f"{name}({defaults})\n\n{doc}"
