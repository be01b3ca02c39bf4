"""INPO (Zhang et al., ICLR 2025): one iteration's loss (h − c)² with
h = Δ_θ − ratio·Δ_ref − (1 − ratio)·Δ_{π_t}. The iterative sample-and-rank loop lives in the
trainer; each iteration trains π_{t+1} from π_t with this estimator."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import INPOWeights, UnifiedEstimator


@preset("inpo")
def inpo(ratio: float = 1.0 / 3.0, eta: float = 0.005) -> UnifiedEstimator:
    """ratio = ητ = 1/3 and c = 1/(2·eta) = 100 as in the reference scripts; needs
    ``ref_logprobs`` (π_ref) and ``prev_logprobs`` (π_t) precomputed for each pair."""
    return pairwise(INPOWeights(ratio=ratio, eta=eta), "inpo")
