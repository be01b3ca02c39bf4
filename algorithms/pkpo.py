"""PKPO (Walder & Karkhanis 2025, "Pass@K Policy Optimization: Solving Harder Reinforcement
Learning Problems", arXiv 2505.15201): optimize pass@k — or, for graded rewards, the expected
best of k samples — for any k up to the n rollouts of a prompt, by transforming the group's
rewards into s^(loo−1) (eq. 33, the estimator the paper trains with),

    Â_i = (1 / C(n, k)) Σ_{|I| = k, i ∈ I} (max_{j∈I} g_j − max_{j∈I∖i} g_j),

an unbiased estimate of ∇E[max of k] with the best of the other k − 1 as baseline. k = n is
``grpo_passk`` without its std division (Tang et al. 2025); k = 1 is the mean reward (the paper's
baseline then is RLOO: the ``rloo`` preset). The paper trains with n = 16 and k ∈ {2, 4, 8}
in a PPO-style loss; here PPO's clipped token loss, token-mean, no std division."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import MaxAtK, PPOClip, UnifiedEstimator


@preset("pkpo")
def pkpo(k: int = 4, eps_low: float = 0.2, eps_high: float = 0.2) -> UnifiedEstimator:
    """s^(loo−1) for pass@``k`` (set it to the k you evaluate; ≤ rollout.n), PPO clip 0.2."""
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps_low, eps_high=eps_high),
        reference="old",
        advantage=MaxAtK(k=k, std=False),
        aggregation="token-mean",
        name="pkpo",
    )
