"""VESPO (Shen et al. 2026, "Variational Sequence-Level Soft Policy Optimization for Stable
Off-Policy LLM Training", arXiv 2602.10693): REINFORCE with a smooth, asymmetric weight on each
sampled sequence's importance ratio w = Π_t π_θ/π_old (the true product, no length
normalization):

    loss = (1/Σ|y_i|) Σ_i Σ_t −sg[φ(w_i)] · Â_i · ℓ_t,   φ(w) = e^λ · w^k · e^(−λw)

(k, λ) = (2, 3) for Â ≥ 0 and (3, 2) for Â < 0, GRPO advantages, token-mean. With the
engine's log-probs (online) w is measured against the sampling engine, π_θ/π_engine, as the
reference code folds its rollout-correction weights into w; so the preset refuses
``online.rollout_correction`` (the ratio would count twice). Checked against the reference
code (FloyedShen/VESPO ``compute_policy_loss_vespo``) and TRL ``loss_type="vespo"``
(``get_gamma_weights``): the same φ, equal to TRL's from the same inputs."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import GammaWeight, GroupNormalized, UnifiedEstimator


@preset("vespo")
def vespo(
    k_pos: float = 2.0, lambda_pos: float = 3.0, k_neg: float = 3.0, lambda_neg: float = 2.0
) -> UnifiedEstimator:
    """The reference code's and TRL's defaults; token-mean over the mini-batch."""
    return UnifiedEstimator(
        mask=GammaWeight(k_pos=k_pos, lambda_pos=lambda_pos, k_neg=k_neg, lambda_neg=lambda_neg),
        reference="current",
        advantage=GroupNormalized(std=True),
        aggregation="token-mean",
        name="vespo",
    )
