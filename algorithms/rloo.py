"""RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
Learning from Human Feedback in LLMs", arXiv 2402.14740): REINFORCE on whole sequences with
the leave-one-out baseline of the other k − 1 samples of the prompt, the KL to π_ref paid in
the reward,

    r̃_i = r_i − β Σ_t (ℓ_old,t − ℓ_ref,t),    Â_i = r̃_i − (1/(k−1)) Σ_{j≠i} r̃_j,
    loss = mean_i −min(ρ_i Â_i, clip(ρ_i, 1 − ε_low, 1 + ε_high) Â_i),  ρ_i = π_θ(y_i)/π_old(y_i),

as TRL's RLOOTrainer (β = 0.05, ε = 0.2, the ratio of whole sequences; on one on-policy update
ρ = 1 and this is the paper's REINFORCE exactly). ``normalize_advantages`` whitens Â over the
rollout batch (TRL's option, over its generation batch). Checked against TRL's
``RLOOTrainer._compute_loss``."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import LeaveOneOut, PPOClip, UnifiedEstimator


@preset("rloo")
def rloo(
    kl_coef: float = 0.05,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    normalize_advantages: bool = False,
) -> UnifiedEstimator:
    """TRL's defaults: β = 0.05 (needs π_ref; 0 drops it), ε = 0.2, no normalization."""
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps_low, eps_high=eps_high),
        reference="old",
        advantage=LeaveOneOut(kl_coef=kl_coef, normalize=normalize_advantages),
        likelihood="sequence-sum",
        aggregation="seq-mean-token-sum",
        name="rloo",
    )
