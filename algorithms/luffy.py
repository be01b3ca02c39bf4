"""LUFFY (Yan et al. 2025): mixed-policy GRPO. One rollout per group is an off-policy
demonstration (a DEMO row in the group); advantages are centred over the mixed group;
on-policy tokens use the clipped ratio, demonstration tokens the shaping f(p) = p/(p + γ)
with no clip.

The demonstration replacement is the preset's data side (:class:`LuffyDemonstrations`, its
router). Two loss forms: the defaults follow the paper and the code's defaults (PPO clip ε = 0.2
on on-policy tokens, token-mean); ``remove_clip=True, remove_token_mean=True`` is the released
run (exp_scripts/train.sh sets ``loss_remove_clip`` and ``loss_remove_token_mean``; in
``compute_token_on_off_policy_loss`` the first drops the on-policy clip, leaving −Â·ρ, the
second replaces the token mean by Σ(loss·mask) / mask.shape[-1], the padded response length,
i.e. ``max_response_length`` = 8192 there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from alignlib.algorithms.registry import preset
from alignlib.estimator import (
    EntropyBonus,
    GroupNormalized,
    OldPolicy,
    PerRole,
    PerRoleMask,
    PPOClip,
    Role,
    RowPlan,
    Rows,
    SeqMeanTokenSumNorm,
    ShapedReference,
    UnifiedEstimator,
    plan_rows,
)


@dataclass(frozen=True)
class LuffyDemonstrations:
    """LUFFY's router: the last of the n rollouts of every prompt is replaced by the prompt's
    demonstration (role DEMO, same group, scored by the run's rewards), so each group's baseline
    mixes on- and off-policy rows."""

    needs_demonstrations: bool = field(default=True, init=False)
    scores_demonstrations: bool = field(default=True, init=False)
    min_samples: int = field(default=2, init=False)

    def route(self, rewards: Tensor, correct: Tensor, demo_rewards: Tensor | None) -> RowPlan:
        if demo_rewards is None:
            raise ValueError("LUFFY's routing needs the demonstrations' rewards")
        num_prompts, n = rewards.shape
        samples = [[*range(n - 1), -1] for _ in range(num_prompts)]
        return plan_rows(rewards, samples, demo_rewards)


@preset("luffy")
def luffy(
    gamma: float = 0.1,
    eps: float = 0.2,
    entropy_coef: float = 0.001,
    remove_clip: bool = False,
    remove_token_mean: bool = False,
    max_response_length: float = 8192,
) -> UnifiedEstimator:
    """γ = 0.1, ε = 0.2 on on-policy tokens, Â = R − mean (grpo_use_std=False), token-mean,
    entropy bonus 0.001 (LUFFY's train.sh). The released run: ``remove_clip=True`` (no clip on
    on-policy tokens), ``remove_token_mean=True`` (Σ over tokens / ``max_response_length``)."""
    regularizers = [EntropyBonus(coef=entropy_coef)] if entropy_coef else []
    mask = None if remove_clip else PerRoleMask({Role.SAMPLE: PPOClip(eps_low=eps, eps_high=eps)})
    aggregation = (
        SeqMeanTokenSumNorm(constant=max_response_length) if remove_token_mean else "token-mean"
    )
    return UnifiedEstimator(
        mask=mask,
        reference=PerRole({Role.SAMPLE: OldPolicy(), Role.DEMO: ShapedReference(gamma)}),
        advantage=GroupNormalized(std=False),
        aggregation=aggregation,
        rows=Rows.of(Role.SAMPLE, Role.DEMO),
        regularizers=regularizers,
        name="luffy",
        router=LuffyDemonstrations(),
    )
