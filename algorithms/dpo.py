"""DPO (Rafailov et al. 2023): −log σ(βΔ), Δ = r(y_w) − r(y_l), r = log π/π_ref summed."""

from alignlib.algorithms.registry import PAIR_ROWS, preset
from alignlib.estimator import DPOWeights, UnifiedEstimator


@preset("dpo")
def dpo(beta: float = 0.1) -> UnifiedEstimator:
    """Sigmoid DPO, mean over pairs. β = 0.1 (paper, TRL default)."""
    return UnifiedEstimator(
        advantage=DPOWeights(beta),
        likelihood="sequence-sum",
        aggregation="pair-mean",
        rows=PAIR_ROWS,
        name="dpo",
    )
