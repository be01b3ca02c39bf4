"""PPO with a learned critic (Schulman et al. 2017; RLHF's PPO, Ouyang et al. 2022): per token
−min(ρÂ, clip(ρ, 1−ε, 1+ε)Â), token-mean, with Â from GAE over a value model's V(s_t) and the
per-token reward R·[t = last] − β(log π_old − log π_ref), whitened over the rollout batch. The
critic trains beside the policy on the returns Â + V with the clipped value loss
½·max((V − G)², (clip(V, V_old ± ε_v) − G)²). Defaults are TRL's PPOTrainer (β = 0.05 k1 in
the reward, γ = 1, λ = 0.95, ε = ε_v = 0.2, no dual clip); verl's differ (λ = 1, ε_v = 0.5,
dual clip 3, the KL as a loss term: ``kl_coef=0`` with a ``grpo``-style KL is not this preset),
OpenRLHF's keep the KL in the reward. The critic's model and optimizer: the ``critic:`` section."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import GAE, PPOClip, UnifiedEstimator, ValueLoss


@preset("ppo_gae")
def ppo_gae(
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    kl_coef: float = 0.05,
    value_clip: float | None = 0.2,
) -> UnifiedEstimator:
    """``kl_coef`` β of the KL penalty in the reward (needs the reference policy; 0: none);
    ``value_clip`` ε_v of the critic's clipped value loss (None: the plain squared error)."""
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip),
        reference="old",
        advantage=GAE(gamma=gamma, lam=lam, kl_coef=kl_coef),
        aggregation="token-mean",
        name="ppo",
        value_loss=ValueLoss(clip=value_clip),
    )
