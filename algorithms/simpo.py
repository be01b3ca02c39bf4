"""SimPO (Meng et al. 2024): reference-free −log σ(β(l̄(y_w) − l̄(y_l)) − γ), length-averaged.

The margin term is TPO-L's (TPO-L is SimPO plus a gold NLL). TRL's ``CPOTrainer`` with
``loss_type="simpo"`` computes the same loss; its default ``cpo_alpha=1`` adds an NLL on the
chosen response ("CPO-SimPO"), which is ``alpha`` here (0 in the paper).
"""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import NLL, TPOLWeights, UnifiedEstimator


@preset("simpo")
def simpo(beta: float = 2.0, gamma: float = 1.0, alpha: float = 0.0) -> UnifiedEstimator:
    """SimPO with the reference code's defaults β = 2.0, γ/β = 0.5 (so γ = 1.0; the paper's
    Llama-3-Base setting). The paper tunes β ∈ [2, 2.5] and γ ∈ [0.3, 1.6] per model.
    ``alpha`` > 0 adds α·NLL(chosen), a token mean over the mini-batch's chosen tokens."""
    margin = pairwise(TPOLWeights(beta=beta, gamma=gamma), "simpo", "sequence-mean")
    if alpha == 0:
        return margin
    nll = NLL(coef=alpha, normalization="token_mean_batch", name="nll")
    return UnifiedEstimator(terms=[*margin.terms, nll])
