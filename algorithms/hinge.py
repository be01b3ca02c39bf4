"""SLiC-style hinge preference loss: relu(1 − βΔ)."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import HingeWeights, UnifiedEstimator


@preset("hinge")
def hinge(beta: float = 0.1) -> UnifiedEstimator:
    """Hinge loss on the DPO margin (TRL loss_type='hinge'), β = 0.1."""
    return pairwise(HingeWeights(beta), "hinge")
