"""KL-Cov (Cui et al. 2025): −Âρ, plus β·|log π − log π_old| on the top-k covariance tokens."""

from typing import Literal

from alignlib.algorithms.registry import preset
from alignlib.estimator import GroupNormalized, KLCov, OldPolicy, UnifiedEstimator


@preset("kl_cov")
def kl_cov(
    ratio: float = 2e-3, coef: float = 1.0, scope: Literal["global", "per_microbatch"] = "global"
) -> UnifiedEstimator:
    """k = max(1, ⌊N·ratio⌋) with ratio = 2e-3 (7B; 2e-4 for 32B), β = 1; no clip; GRPO
    advantages, token-mean. It only acts with more than one optimizer mini-batch per rollout."""
    return UnifiedEstimator(
        mask=KLCov(ratio=ratio, coef=coef, scope=scope),
        reference=OldPolicy(clamp=None),
        advantage=GroupNormalized(std=True),
        aggregation="token-mean",
        name="kl_cov",
    )
