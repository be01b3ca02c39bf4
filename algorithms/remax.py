"""ReMax (Li et al. 2024, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning
Method for Aligning Large Language Models", ICML, arXiv 2310.10505, Algorithm 1): REINFORCE
whose baseline is the reward of the prompt's greedy completion,

    loss = (1/N) Σ_i Σ_t −(R_i − R(ȳ_i)) · ℓ_t(y_i),   ȳ_i = the greedy (argmax) decoding,

no critic and no value model: one extra greedy generation per prompt, scored by the same
rewards (online, the collector samples it; ``rollout/greedy_reward_mean`` logs its reward).
The paper samples one completion per prompt; with ``rollout.n`` > 1 every sample of a prompt
shares its greedy baseline, as verl's ``remax`` does. verl trains the advantage with its actor's
PPO loss (clip 0.2, token-mean): ``clip=0.2, aggregation="token-mean"``."""

from alignlib.algorithms.registry import kl_regularizers, preset
from alignlib.estimator import AGGREGATIONS, GreedyBaseline, PPOClip, UnifiedEstimator


@preset("remax")
def remax(
    clip: float | None = None,
    aggregation: str = "seq-mean-token-sum",
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
) -> UnifiedEstimator:
    """The paper: plain REINFORCE (no ratio, no clip), Σ over tokens, mean over sequences, no
    KL. ``clip`` ε: PPO's clipped ratio to π_old instead (verl's actor); ``kl_coef`` > 0 adds
    a KL to π_ref as a loss (verl charges it in the reward)."""
    agg = AGGREGATIONS.resolve(aggregation)
    mask = None if clip is None else PPOClip(eps_low=clip, eps_high=clip)
    return UnifiedEstimator(
        mask=mask,
        reference="current" if clip is None else "old",
        advantage=GreedyBaseline(),
        aggregation=agg,
        regularizers=kl_regularizers(kl_coef, kl_estimator, agg),
        name="remax",
    )
