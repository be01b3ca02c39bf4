"""APO-down (D'Oosterlinck et al. 2024): for preference data whose chosen answers are worse than
the model's own, lower both likelihoods, the rejected one more (TRL's ``apo_down``)."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import APODownWeights, UnifiedEstimator


@preset("apo_down")
def apo_down(beta: float = 0.1) -> UnifiedEstimator:
    """β = 0.1, the paper's."""
    return pairwise(APODownWeights(beta), "apo_down")
