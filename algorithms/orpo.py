"""ORPO (Hong et al. 2024): NLL(y_w) − λ·log σ(log odds(y_w) − log odds(y_l)), no reference.

odds(y) = P/(1 − P) with P = exp(l̄(y)), the length-averaged likelihood (as the paper and TRL's
``ORPOTrainer``). The NLL is the paper's L_SFT of the chosen response given the prompt, a token
mean over the mini-batch's chosen tokens. The released code (unless ``--disable_prompt_loss``) and
TRL's ``ORPOTrainer`` also count the prompt tokens in that NLL; alignlib trains response tokens
only, like every other method here (tests/test_trl_parity_reference_free.py matches TRL exactly
where the two coincide).
"""

from alignlib.algorithms.registry import PAIR_ROWS, preset
from alignlib.estimator import NLL, ORPOWeights, UnifiedEstimator


@preset("orpo")
def orpo(beta: float = 0.1) -> UnifiedEstimator:
    """ORPO with λ (TRL's ``beta``) = 0.1, the paper's and TRL's default."""
    odds_ratio = UnifiedEstimator(
        advantage=ORPOWeights(beta),
        likelihood="sequence-mean",
        aggregation="pair-mean",
        rows=PAIR_ROWS,
        name="orpo",
    )
    return UnifiedEstimator(terms=[*odds_ratio.terms, NLL(normalization="token_mean_batch")])
