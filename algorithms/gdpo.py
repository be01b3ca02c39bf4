"""GDPO (Group reward-Decoupled normalization Policy Optimization, arXiv 2601.05242): GRPO with
several rewards, each normalized within its group before the weighted sum, the sum then
normalized over the batch (``alignlib.estimator.multi_reward``); GRPO's loss otherwise
(clip ε = 0.2, per-sequence token mean, no KL). With one reward it is GRPO up to the batch
normalization. As TRL's ``multi_objective_aggregation="normalize_then_sum"``; the weights are
``online.rewards[].weight``."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import DecoupledGroupNormalized, PPOClip, UnifiedEstimator


@preset("gdpo")
def gdpo(
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    aggregation: str = "seq-mean-token-mean",
    eps: float = 1e-4,
) -> UnifiedEstimator:
    """GRPO's clipped loss and aggregation, GDPO's decoupled advantages."""
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps_low, eps_high=eps_high),
        reference="old",
        advantage=DecoupledGroupNormalized(eps=eps),
        aggregation=aggregation,
        name="gdpo",
    )
