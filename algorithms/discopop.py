"""DiscoPOP (Chris Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for
Large Language Models"): the LLM-discovered log-ratio modulated loss (TRL's ``discopop``)."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import DiscoPOPWeights, UnifiedEstimator


@preset("discopop")
def discopop(beta: float = 0.05, tau: float = 0.05) -> UnifiedEstimator:
    """β = 0.05 and τ = 0.05, the paper's."""
    return pairwise(DiscoPOPWeights(beta, tau), "discopop")
