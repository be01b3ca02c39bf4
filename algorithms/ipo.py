"""IPO (Azar et al. 2023): (Δ' − 1/(2β))² on length-averaged log-ratios (as TRL ≥ 1.x)."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import IPOWeights, UnifiedEstimator


@preset("ipo")
def ipo(beta: float = 0.1) -> UnifiedEstimator:
    """IPO with β = 0.1 (TRL's τ). Policy and reference log-probs are both length-averaged."""
    return pairwise(IPOWeights(beta), "ipo", "sequence-mean")
