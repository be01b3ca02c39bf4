"""Pass@k Training (Chen et al. 2025, "Pass@k Training for Adaptively Balancing Exploration and
Exploitation of Large Reasoning Models", arXiv 2508.10751), with the analytic advantage of its
authors' ``passk_adv.py``: the group's reward is pass@k, ρ = 1 − C(n − c, k)/C(n, k) (n
rollouts, c right), each row's the mean pass@k of the k-subsets that hold it, normalized with
the Bernoulli std σ = sqrt(ρ(1 − ρ)):

    Â_right = (1 − ρ)/σ,   Â_wrong = (1 − ρ − C(n − c − 1, k − 1)/C(n − 1, k − 1))/σ.

A wrong answer is pushed down less the more of the group is right (another sample would have
passed for it), which keeps exploring; unlike ``pkpo`` (unbiased for ∇pass@k) this is the
bootstrap reward normalized as GRPO does. PPO's clipped token loss, token-mean (verl's
defaults, into which the authors' code plugs). Rewards must lie in [0, 1] (a 0/1 verifier:
``online.rewards: [{name: math}]``; a format bonus on top would exceed 1 and is refused)."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import PassAtKTraining, PPOClip, UnifiedEstimator


@preset("passk_training")
def passk_training(k: int = 4, eps_low: float = 0.2, eps_high: float = 0.2) -> UnifiedEstimator:
    """Analytic pass@``k`` advantage (rewards in [0, 1]; k ≤ rollout.n), PPO clip 0.2."""
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps_low, eps_high=eps_high),
        reference="old",
        advantage=PassAtKTraining(k=k),
        aggregation="token-mean",
        name="passk_training",
    )
