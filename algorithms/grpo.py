"""GRPO (Shao et al. 2024, DeepSeekMath eq. 3): per token −min(ρÂ, clip(ρ, 1−ε, 1+ε)Â) + β·k3,
with Â = (R − mean_group)/(std_group + ε), both parts inside the same per-sequence token mean,
then the mean over sequences. Checked against TRL's ``loss_type="grpo"`` (``GRPOTrainer
._compute_loss``: the KL is added to the per-token loss before the per-sequence mean) and verl's
``compute_policy_loss_vanilla`` + ``agg_loss``. TRL's mean counts every row; here a row with no
valid token is not counted (rollouts always have at least one)."""

from alignlib.algorithms.registry import kl_regularizers, preset
from alignlib.estimator import (
    AGGREGATIONS,
    GroupNormalized,
    PPOClip,
    UnifiedEstimator,
)


@preset("grpo")
def grpo(
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    aggregation: str = "seq-mean-token-mean",
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    kl_importance_weighted: bool = False,
    clip_c: float | None = None,
) -> UnifiedEstimator:
    """The paper's per-sequence token mean; ε = 0.2 (DAPO's clip-higher: eps_high=0.28).
    The paper's KL penalty (k3, β = 0.04) is off by default, as in current practice; when on it
    needs ``ref_logprobs`` and is aggregated exactly like the clipped term (same ``aggregation``,
    so with the default it sits inside each sequence's token mean, as eq. 3);
    ``kl_importance_weighted`` makes it DeepSeek-V3.2's unbiased estimate (each token's k3
    times π_θ/π_old, TRL's ``use_bias_correction_kl``, on by default there); ``kl_estimator``
    k1, k2, k3, or verl's straight-through ``k3+`` / ``k1+`` (k3's value, k2's gradient, which
    is KL's own on π's samples). ``clip_c`` is
    PPO's dual clip c (> 1: the loss of a token with Â < 0 is capped at −c·Â): verl applies it
    to GRPO (c = 3; 10 in its DAPO recipe), the paper does not, so it is off (None); TRL's
    ``delta`` (INTELLECT-2's two-sided clip, ρ capped at δ) is the same loss and gradient."""
    agg = AGGREGATIONS.resolve(aggregation)
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps_low, eps_high=eps_high, dual_clip=clip_c),
        reference="old",
        advantage=GroupNormalized(std=True),
        aggregation=agg,
        regularizers=kl_regularizers(kl_coef, kl_estimator, agg, kl_importance_weighted),
        name="grpo",
    )
