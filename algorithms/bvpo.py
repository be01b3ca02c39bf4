"""BVPO (Zhu et al. 2025): α·L_DPO(trace pairs) + (1 − α)·L_DPO(empty-trace pairs).

A mixture, so a sum of two DPO terms on disjoint rows (``batch.trace`` True / False), each a
mean over its own pairs: the gradient is α·g_t + (1 − α)·g_e exactly.
"""

from alignlib.algorithms.registry import preset
from alignlib.estimator import DPOWeights, Role, Rows, UnifiedEstimator
from alignlib.estimator.registry import check_number


def _dpo_on(trace: bool, beta: float, name: str) -> UnifiedEstimator:
    return UnifiedEstimator(
        advantage=DPOWeights(beta),
        likelihood="sequence-sum",
        aggregation="pair-mean",
        rows=Rows.of(Role.CHOSEN, Role.REJECTED, trace=trace),
        name=name,
    )


@preset("bvpo")
def bvpo(alpha: float = 0.5, beta: float = 0.1) -> UnifiedEstimator:
    """α = 0.5 as in the paper's runs; β is DPO's."""
    check_number("bvpo", "alpha", alpha, ge=0, le=1, why="α mixes the trace and empty-trace losses")
    return alpha * _dpo_on(True, beta, "trace") + (1 - alpha) * _dpo_on(False, beta, "empty")


def optimal_alpha(a: float, b: float, c: float) -> float:
    """The MSE-optimal mixing weight α* = (B − C)/(A + B − 2C), clipped to [0, 1].

    A = ‖b_t‖² + tr Σ_t, B = ‖b_e‖² + tr Σ_e, C = ⟨b_t, b_e⟩ + tr Σ_te: biases and
    (co)variances of the trace and empty-trace gradient estimators.
    """
    denominator = a + b - 2 * c
    if denominator <= 0:
        return 0.5
    return min(max((b - c) / denominator, 0.0), 1.0)
