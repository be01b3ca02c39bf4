"""GRPO (Shao et al. 2024): PPO clip with group-normalized advantages (R − mean)/(std + ε)."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import GroupNormalized, KLPenalty, PPOClip, UnifiedEstimator


@preset("grpo")
def grpo(
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    aggregation: str = "seq-mean-token-mean",
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
) -> UnifiedEstimator:
    """The paper's per-sequence token mean; ε = 0.2 (DAPO's clip-higher: eps_high=0.28).
    The paper's KL penalty (k3, β = 0.04) is off by default, as in current practice; it
    needs ``ref_logprobs`` when on."""
    regularizers = [KLPenalty(coef=kl_coef, estimator=kl_estimator)] if kl_coef else []  # type: ignore[arg-type]
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps_low, eps_high=eps_high),
        reference="old",
        advantage=GroupNormalized(std=True),
        aggregation=aggregation,
        regularizers=regularizers,
        name="grpo",
    )
