"""BVPO (Zhu et al. 2025): α·L_DPO(trace pairs) + (1 − α)·L_DPO(empty-trace pairs).

A mixture, so a sum of two DPO terms on disjoint rows (``batch.trace`` True / False), each a
mean over its own pairs: the gradient is α·g_t + (1 − α)·g_e exactly. ``alpha: auto`` sets α
per mini-batch to the paper's MSE-optimal α*, measured online (algorithms/bvpo_auto.py).
"""

from __future__ import annotations

from typing import Literal

from alignlib.algorithms.bvpo_auto import PAPER_ALPHA, auto_mixture, optimal_alpha
from alignlib.algorithms.registry import preset
from alignlib.estimator import DPOWeights, Role, Rows, UnifiedEstimator
from alignlib.estimator.registry import ParameterError, check_number

__all__ = ["bvpo", "optimal_alpha"]


def _dpo_on(trace: bool, beta: float, name: str) -> UnifiedEstimator:
    return UnifiedEstimator(
        advantage=DPOWeights(beta),
        likelihood="sequence-sum",
        aggregation="pair-mean",
        rows=Rows.of(Role.CHOSEN, Role.REJECTED, trace=trace),
        name=name,
    )


@preset("bvpo")
def bvpo(
    alpha: float | Literal["auto"] = PAPER_ALPHA, beta: float = 0.1, auto_decay: float = 0.9
) -> UnifiedEstimator:
    """α = 0.5 as in the paper's runs; β is DPO's. ``alpha: auto`` sets α per mini-batch to the
    paper's MSE-optimal α* measured online (about one extra backward pass per micro-batch,
    single-process runs); ``auto_decay`` is how much of the running gradient moments each new
    mini-batch keeps (1: plain averages over the whole run)."""
    check_number("bvpo", "auto_decay", auto_decay, gt=0, le=1, why="a forgetting factor")
    if alpha == "auto":
        (trace,) = _dpo_on(True, beta, "trace").terms
        (empty,) = _dpo_on(False, beta, "empty").terms
        return auto_mixture(trace, empty, auto_decay)
    if isinstance(alpha, str):
        detail = f"must be a number in [0, 1] or 'auto', got {alpha!r}"
        raise ParameterError("bvpo", "alpha", detail)
    check_number("bvpo", "alpha", alpha, ge=0, le=1, why="α mixes the trace and empty-trace losses")
    return alpha * _dpo_on(True, beta, "trace") + (1 - alpha) * _dpo_on(False, beta, "empty")
