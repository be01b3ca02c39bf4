"""SLiC-style hinge preference loss: relu(1 − βΔ)."""

from alignlib.algorithms.registry import PAIR_ROWS, preset
from alignlib.estimator import HingeWeights, UnifiedEstimator


@preset("hinge")
def hinge(beta: float = 0.1) -> UnifiedEstimator:
    """Hinge loss on the DPO margin (TRL loss_type='hinge'), β = 0.1."""
    return UnifiedEstimator(
        advantage=HingeWeights(beta),
        likelihood="sequence-sum",
        aggregation="pair-mean",
        rows=PAIR_ROWS,
        name="hinge",
    )
