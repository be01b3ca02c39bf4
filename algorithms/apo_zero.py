"""APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization"): for preference
data whose chosen answers beat the model's own, raise the chosen and lower the rejected
likelihood, each anchored at the reference (TRL's ``apo_zero``)."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import APOZeroWeights, UnifiedEstimator


@preset("apo_zero")
def apo_zero(beta: float = 0.1) -> UnifiedEstimator:
    """β = 0.1, the paper's."""
    return pairwise(APOZeroWeights(beta), "apo_zero")
