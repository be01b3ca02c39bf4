"""CPO (Xu et al. 2024): reference-free −log σ(β(l(y_w) − l(y_l))) + α·NLL(y_w).

The contrastive term is TPO's (summed log-probs, no reference model); the NLL is on the chosen
response, a token mean over the mini-batch's chosen tokens, as TRL's ``CPOTrainer`` computes it.
"""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import NLL, TPOWeights, UnifiedEstimator


@preset("cpo")
def cpo(beta: float = 0.1, alpha: float = 1.0) -> UnifiedEstimator:
    """CPO with the paper's and TRL's defaults β = 0.1, α (TRL's ``cpo_alpha``) = 1."""
    pairs = pairwise(TPOWeights(beta), "cpo")
    nll = NLL(coef=alpha, normalization="token_mean_batch", name="nll")
    return UnifiedEstimator(terms=[*pairs.terms, nll])
