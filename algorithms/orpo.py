"""ORPO (Hong et al. 2024): NLL(y_w) − λ·log σ(log odds(y_w) − log odds(y_l)), no reference.

odds(y) = P/(1 − P) with P = exp(l̄(y)), the length-averaged likelihood (as the paper and TRL's
``ORPOTrainer``). The NLL is the paper's L_SFT of the chosen response given the prompt, a token
mean over the mini-batch's chosen tokens. The released code (unless ``--disable_prompt_loss``) and
TRL's ``ORPOTrainer`` count the prompt's tokens in that NLL too: ``prompt_loss: true`` (the
odds ratio stays on the responses, as theirs).
"""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import NLL, ORPOWeights, UnifiedEstimator


@preset("orpo")
def orpo(beta: float = 0.1, prompt_loss: bool = False) -> UnifiedEstimator:
    """ORPO with λ (TRL's ``beta``) = 0.1, the paper's and TRL's default; the NLL over the
    response (the paper's formula) or, with ``prompt_loss``, over prompt and response (the
    released code's and TRL's default)."""
    odds_ratio = pairwise(ORPOWeights(beta), "orpo", "sequence-mean")
    nll = NLL(normalization="token_mean_batch", with_prompt=prompt_loss)
    return UnifiedEstimator(terms=[*odds_ratio.terms, nll])
