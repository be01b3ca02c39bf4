"""PPO-clip without a critic: −min(ρÂ, clip(ρ, 1−ε, 1+ε)Â), dual-clipped for Â < 0."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import Advantage, KLPenalty, PPOClip, UnifiedEstimator


@preset("ppo")
def ppo(
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = 3.0,
    advantage: Advantage | str = "reinforce_pp",
    kl_coef: float = 0.0,
) -> UnifiedEstimator:
    """ε = 0.2, dual clip c = 3, token-mean. With no critic the default advantage is
    REINFORCE++'s batch-whitened reward; pass ``advantage="given"`` to bring your own (GAE)."""
    regularizers = [KLPenalty(coef=kl_coef)] if kl_coef else []
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip),
        reference="old",
        advantage=advantage,
        aggregation="token-mean",
        regularizers=regularizers,
        name="ppo",
    )
