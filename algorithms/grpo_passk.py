"""Pass@k / max@k training (Tang et al. 2025, "Optimizing Language Models for Inference Time
Objectives using Reinforcement Learning", arXiv 2503.19595): the objective is the best of the
group's k rewards, E[max_i R_i], not their mean. Its gradient with a leave-one-out baseline is
Σ_i (max_j R_j − max_{j≠i} R_j) ∇log π(y_i): only the group's best row gets a weight,
r_max − r_second (0 with a tie at the top), so the policy is pushed to put *some* sample on
the right answer rather than all of them. Divided by the group's std + ε as verl's
``grpo_passk`` (``norm_adv_by_std_in_grpo``, its default), in PPO's clipped token loss,
token-mean (verl's default aggregation)."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import MaxAtK, PPOClip, UnifiedEstimator


@preset("grpo_passk")
def grpo_passk(eps_low: float = 0.2, eps_high: float = 0.2, std: bool = True) -> UnifiedEstimator:
    """r_max − r_second on each group's best row (/ std_group + 1e-6), PPO clip 0.2, token-mean."""
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps_low, eps_high=eps_high),
        reference="old",
        advantage=MaxAtK(std=std),
        aggregation="token-mean",
        name="grpo_passk",
    )
