"""Clip-Cov (Cui et al. 2025): PPO clip plus dropping a few high-covariance tokens."""

from typing import Literal

from alignlib.algorithms.registry import preset
from alignlib.estimator import ClipCov, GroupNormalized, OldPolicy, PPOClip, UnifiedEstimator


@preset("clip_cov")
def clip_cov(
    ratio: float = 2e-4,
    cov_low: float = 1.0,
    cov_high: float = 5.0,
    eps_low: float = 1.0,
    eps_high: float = 1.0,
    seed: int = 0,
    scope: Literal["global", "per_microbatch"] = "global",
) -> UnifiedEstimator:
    """r = 2e-4, ω ∈ (1, 5), PPO clip widened to ε = 1 as in the paper's scripts; GRPO
    advantages, token-mean. Tokens are selected over the whole mini-batch (scope='global')."""
    mask = ClipCov(
        ratio=ratio,
        cov_low=cov_low,
        cov_high=cov_high,
        clip=PPOClip(eps_low=eps_low, eps_high=eps_high, clamp=None),
        seed=seed,
        scope=scope,
    )
    return UnifiedEstimator(
        mask=mask,
        reference=OldPolicy(clamp=None),
        advantage=GroupNormalized(std=True),
        aggregation="token-mean",
        name="clip_cov",
    )
