"""AOT (Melnyk et al. 2024), unpaired: the chosen and the rejected log-ratio distributions are
sorted separately and matched quantile by quantile (TRL's ``loss_type="aot_unpaired"``)."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import AOTWeights, UnifiedEstimator


@preset("aot_unpaired")
def aot_unpaired(beta: float = 0.1, label_smoothing: float = 0.0) -> UnifiedEstimator:
    """β = 0.1 (TRL's default); ε smooths the logistic as cDPO. The rows still come as pairs
    (one chosen and one rejected per prompt), as TRL's."""
    return pairwise(AOTWeights(beta, label_smoothing, paired=False), "aot_unpaired")
