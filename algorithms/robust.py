"""Robust DPO (Chowdhury et al. 2024): DPO made unbiased under preference labels flipped with
probability ε (TRL's ``loss_type="robust"``)."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import RobustDPOWeights, UnifiedEstimator


@preset("robust")
def robust(beta: float = 0.1, label_smoothing: float = 0.1) -> UnifiedEstimator:
    """β = 0.1 as DPO. ε (``label_smoothing``) is your estimate of the flip rate: the paper has
    no single default (its experiments vary it); 0.1 here, 0 is plain DPO."""
    return pairwise(RobustDPOWeights(beta, label_smoothing), "robust")
