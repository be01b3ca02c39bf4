"""EXO (Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment"),
pairwise: reverse KL between the policy's and the data's preference (TRL's ``exo_pair``)."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import EXOPairWeights, UnifiedEstimator


@preset("exo_pair")
def exo_pair(beta: float = 0.1, label_smoothing: float = 1e-3) -> UnifiedEstimator:
    """β = 0.1; ε = 1e-3, the rejected response's share of the data's preference (TRL advises
    1e-3; it must be > 0)."""
    return pairwise(EXOPairWeights(beta, label_smoothing), "exo_pair")
