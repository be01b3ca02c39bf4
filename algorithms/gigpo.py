"""GiGPO (Feng et al. 2025, "Group-in-Group Policy Optimization for LLM Agent Training", arXiv
2505.10978): GRPO for multi-turn agents with credit per step, no critic. The episodes of one task
form a group (the episode advantage, eq. 3); within it, the steps that acted from the same
environment state (the same observation: the *anchor state*) form step groups, and each step's
discounted return G_t = Σ_{k≥t} γ^{k−t} r_k is compared with theirs (the step advantage, eq. 7);
a token of step t trains with Â = A^E + ω·A^S (eq. 8) in PPO's clipped loss.

The environment is any multi-turn one (``rollout.environment``): a turn is a step, the
observation before it its anchor state (the episode's prompt for turn 1), turn rewards are the
step rewards, and what no turn carries (get_reward(), a verifier) belongs to the last step.
With one-turn rollouts every completion is one step from the task's prompt. The run logs
``gigpo/step_group_size``, the mean over trained tokens of how many steps share their anchor
state: near 1, no state recurs across episodes and GiGPO's credit is GRPO's.

Defaults from verl-agent's GiGPO scripts (ALFWorld, WebShop): γ = 0.95, ω = 1, mean-and-std
normalization (``mean_std_norm``; ``std: false`` is its ``mean_norm``), PPO clip 0.2 (verl's
dual clip c = 3), token-mean, KL to π_ref 0.01 (``low_var_kl``: k3) and verl's entropy bonus
0.001. ``form="paper"`` takes the episode group's statistics over its episodes (eq. 3);
``released`` over its steps, an episode counted once per step (verl-agent's
``compute_mean_std_cross_steps``, its default: there every step is a row). verl-agent's
similarity-based grouping of near-identical observations is not offered: states group by exact
equality, as its default."""

from typing import Literal

from alignlib.algorithms.registry import kl_regularizers, preset
from alignlib.estimator import (
    AGGREGATIONS,
    AnchorStateAdvantage,
    EntropyBonus,
    PPOClip,
    Term,
    UnifiedEstimator,
)


@preset("gigpo")
def gigpo(
    form: Literal["paper", "released"] = "paper",
    gamma: float = 0.95,
    step_weight: float = 1.0,
    std: bool = True,
    eps: float = 0.2,
    kl_coef: float = 0.01,
    entropy_coef: float = 0.001,
) -> UnifiedEstimator:
    """γ = 0.95, ω = 1, mean/std normalization, clip 0.2 with dual clip 3, token-mean, KL 0.01
    (k3) and entropy bonus 0.001 as verl-agent's scripts; the paper's episode statistics."""
    if form not in ("paper", "released"):
        raise ValueError(f"gigpo: form must be 'paper' or 'released', got {form!r}")
    agg = AGGREGATIONS.resolve("token-mean")
    regularizers: list[Term] = kl_regularizers(kl_coef, "k3", agg)
    if entropy_coef:
        regularizers.append(EntropyBonus(coef=entropy_coef, aggregation=agg))
    advantage = AnchorStateAdvantage(
        gamma=gamma,
        step_weight=step_weight,
        std=std,
        episode_stats="episodes" if form == "paper" else "steps",
    )
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps, eps_high=eps, dual_clip=3.0),
        reference="old",
        advantage=advantage,
        aggregation=agg,
        regularizers=regularizers,
        name="gigpo",
    )
