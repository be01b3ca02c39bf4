"""NCA (Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit
Rewards"), on pairs (TRL's ``nca_pair``): absolute implicit rewards keep the chosen likelihood
from falling with the rejected one."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import NCAPairWeights, UnifiedEstimator


@preset("nca_pair")
def nca_pair(beta: float = 0.01) -> UnifiedEstimator:
    """β = 0.01, the paper's UltraFeedback setting (TRL's default is 0.1)."""
    return pairwise(NCAPairWeights(beta), "nca_pair")
