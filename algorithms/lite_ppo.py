"""Lite PPO (Liu et al. 2025, "Part I: Tricks or Traps? A Deep Dive into RL for LLM Reasoning",
arXiv 2508.08221): vanilla PPO's clipped loss without a critic plus the two tricks the paper
finds sufficient, and nothing else (no KL, no dynamic sampling, no overlong filtering):

- advantages normalized by the **group mean and the batch standard deviation**,
  Â_i = (R_i − mean_group(R)) / (std_batch(R) + ε): the group mean keeps each prompt's own
  baseline, the batch std stays robust when a group's rewards are (nearly) all equal, where a
  group std would blow its small differences up;
- a **token-level** loss (Σ over every token of the mini-batch / their number).

ε = 0.2 on both sides. As ROLL's LitePPO (``norm_mean_type: group``, ``norm_std_type:
batch``, ``token_level_loss``) and TRL's ``scale_rewards="batch"`` with ``loss_type="dapo"``
(both take the std over the whole rollout batch, however many optimizer mini-batches it is
split into)."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import GroupNormalized, PPOClip, UnifiedEstimator


@preset("lite_ppo")
def lite_ppo(eps_low: float = 0.2, eps_high: float = 0.2, eps: float = 1e-6) -> UnifiedEstimator:
    """Group mean, batch std, token-mean; PPO clip ε = 0.2."""
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps_low, eps_high=eps_high),
        reference="old",
        advantage=GroupNormalized(std=True, eps=eps, std_over="batch"),
        aggregation="token-mean",
        name="lite_ppo",
    )
