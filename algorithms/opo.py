"""OPO (Hao et al. 2025, "On-Policy RL with Optimal Reward Baseline", arXiv 2505.23585): exact
on-policy training with the variance-minimizing baseline, which for sequence rewards the paper
approximates by the group's rewards weighted by their responses' lengths,

    Â_i = R_i − Σ_j |y_j| R_j / Σ_j |y_j|     (j over the prompt's group; no std division),

in PPO's clipped token loss, token-mean. "Exact on-policy": one optimizer step per rollout
batch (``online.mini_batches: 1``, ``online.ppo_epochs: 1``, verl's ``ppo_mini_batch_size`` =
``train_batch_size``), so ρ = 1 and the clip never acts; no KL, no entropy bonus. As verl's
``adv_estimator: opo`` (a group of one row has baseline 0)."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import LengthWeightedBaseline, PPOClip, UnifiedEstimator


@preset("opo")
def opo(eps_low: float = 0.2, eps_high: float = 0.2) -> UnifiedEstimator:
    """Length-weighted group baseline, token-mean; ε = 0.2 only matters off-policy."""
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps_low, eps_high=eps_high),
        reference="old",
        advantage=LengthWeightedBaseline(),
        aggregation="token-mean",
        name="opo",
    )
