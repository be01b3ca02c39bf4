"""OTB (Li et al. 2026, "Optimal Token Baseline", arXiv 2602.07078; verl
``adv_estimator: optimal_token_baseline`` with ``actor.calculate_sum_pi_squared``): a baseline
per token, the group's returns weighted by each row's realized energy up to that token,

    Â_i,k = G_i,k − Σ_j G_j,k W_j,k / (Σ_j W_j,k + ε),
    W_k = Σ_{t ≤ k} (1 − 2π_old(y_t) + Σ_v π_old(v)²),

so tokens after a confident prefix and after a surprising one get different baselines (see
:mod:`alignlib.estimator.token_baseline`). Trained with verl's actor defaults: PPO clip
ε = 0.2, token-mean, no KL, no entropy bonus. Needs a no-grad π_old pass (it also gives
log Σπ², from the same logits), even on-policy."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import OptimalTokenBaseline, PPOClip, UnifiedEstimator


@preset("otb")
def otb(eps_low: float = 0.2, eps_high: float = 0.2, zero_tail: bool = True) -> UnifiedEstimator:
    """verl's: ε = 0.2, token-mean, ``handle_zero_tail`` on."""
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps_low, eps_high=eps_high),
        reference="old",
        advantage=OptimalTokenBaseline(zero_tail=zero_tail),
        aggregation="token-mean",
        name="otb",
    )
