"""BCO (Jung et al. 2024, "Binary Classifier Optimization") on paired data, as TRL's
``bco_pair``: chosen and rejected are classified by their implicit rewards (no shift δ)."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import BCOPairWeights, UnifiedEstimator


@preset("bco_pair")
def bco_pair(beta: float = 0.1) -> UnifiedEstimator:
    """β = 0.1 (TRL's default)."""
    return pairwise(BCOPairWeights(beta), "bco_pair")
