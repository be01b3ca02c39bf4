"""LUFFY (Yan et al. 2025): mixed-policy GRPO. One rollout per group is an off-policy
demonstration (a DEMO row in the group); advantages are centred over the mixed group;
on-policy tokens use the clipped ratio, demonstration tokens the shaping f(p) = p/(p + γ)
with no clip."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import (
    EntropyBonus,
    GroupNormalized,
    OldPolicy,
    PerRole,
    PerRoleMask,
    PPOClip,
    Role,
    Rows,
    ShapedReference,
    UnifiedEstimator,
)


@preset("luffy")
def luffy(gamma: float = 0.1, eps: float = 0.2, entropy_coef: float = 0.001) -> UnifiedEstimator:
    """γ = 0.1, ε = 0.2 on on-policy tokens, Â = R − mean (grpo_use_std=False), token-mean,
    entropy bonus 0.001 (LUFFY's train.sh)."""
    regularizers = [EntropyBonus(coef=entropy_coef)] if entropy_coef else []
    return UnifiedEstimator(
        mask=PerRoleMask({Role.SAMPLE: PPOClip(eps_low=eps, eps_high=eps)}),
        reference=PerRole({Role.SAMPLE: OldPolicy(), Role.DEMO: ShapedReference(gamma)}),
        advantage=GroupNormalized(std=False),
        aggregation="token-mean",
        rows=Rows.of(Role.SAMPLE, Role.DEMO),
        regularizers=regularizers,
        name="luffy",
    )
