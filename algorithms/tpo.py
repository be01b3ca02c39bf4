"""TPO (Saeidi et al. 2024): reference-free −log σ(β(l(y_w) − l(y_l))) + α·NLL(gold)."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import NLL, Role, Rows, TPOWeights, UnifiedEstimator


@preset("tpo")
def tpo(beta: float = 0.01, alpha: float = 1.0) -> UnifiedEstimator:
    """TPO with TRL's defaults β = 0.01, α = 1 (paper v1: β = 0.1). The gold response is the
    batch's DEMO row; its NLL is a token mean over all gold tokens of the mini-batch."""
    pairs = pairwise(TPOWeights(beta), "tpo")
    gold = NLL(coef=alpha, rows=Rows.of(Role.DEMO), normalization="token_mean_batch", name="gold")
    return UnifiedEstimator(terms=[*pairs.terms, gold])
