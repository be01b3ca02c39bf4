"""Process-supervised GRPO (Shao et al. 2024, DeepSeekMath §4.1.3): GRPO's clipped objective with
Â_{i,t} = Σ_{index(j) ≥ t} r̃_i^(j), each step reward normalized with the mean and std of all
step rewards of its group. Step rewards come from a process reward model
(`{name: process_reward_model, params: {path: ..., reduce: steps}}`) or a multi-turn
environment's turn rewards; what no step carries (a verifier's outcome) joins the last step,
so without step rewards this is outcome GRPO."""

from alignlib.algorithms.registry import kl_regularizers, preset
from alignlib.estimator import (
    AGGREGATIONS,
    PPOClip,
    ProcessGroupNormalized,
    UnifiedEstimator,
)


@preset("grpo_process")
def grpo_process(
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    aggregation: str = "seq-mean-token-mean",
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    kl_importance_weighted: bool = False,
    std: bool = True,
) -> UnifiedEstimator:
    """GRPO's defaults (ε = 0.2, per-sequence token mean, KL off) with the process advantage;
    ``std=False`` only centres the step rewards (Dr. GRPO's choice)."""
    agg = AGGREGATIONS.resolve(aggregation)
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps_low, eps_high=eps_high),
        reference="old",
        advantage=ProcessGroupNormalized(std=std),
        aggregation=agg,
        regularizers=kl_regularizers(kl_coef, kl_estimator, agg, kl_importance_weighted),
        name="grpo_process",
    )
