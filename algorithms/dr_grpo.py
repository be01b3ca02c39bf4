"""Dr. GRPO (Liu et al. 2025): no std normalization, no per-sequence length normalization."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import GroupNormalized, PPOClip, SeqMeanTokenSumNorm, UnifiedEstimator


@preset("dr_grpo")
def dr_grpo(
    eps_low: float = 0.2, eps_high: float = 0.2, max_response_length: float | None = None
) -> UnifiedEstimator:
    """Σ over all tokens / L with Â = R − mean_group. L = ``max_response_length`` (None: the
    padded width of the mini-batch, as verl); TRL divides by B·L: pass that product instead."""
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps_low, eps_high=eps_high),
        reference="old",
        advantage=GroupNormalized(std=False),
        aggregation=SeqMeanTokenSumNorm(constant=max_response_length),
        name="dr_grpo",
    )
