"""SAPO (Gao et al. 2025, "Soft Adaptive Policy Optimization", arXiv 2511.20347): a smooth,
temperature-controlled gate in place of PPO's hard clip,

    loss = mean_i (1/|y_i|) Σ_t −f(ρ_t)·Â_i,  f(x) = σ(τ(x − 1))·4/τ,  τ = τ_pos if Â > 0 else τ_neg

(per-sequence token mean), so the gradient −f'(ρ)·Â·ρ·∇ℓ with f'(1) = 1 is the plain policy
gradient on-policy and fades smoothly off-policy instead of being cut at 1 ± ε; τ_neg > τ_pos
damps negative-advantage updates faster. Defaults τ_pos = 1.0, τ_neg = 1.05. Checked against
verl ``compute_policy_loss_sapo`` (gate on the token ratio, log ρ clamped to ±20,
seq-mean-token-mean) and TRL ``loss_type="sapo"`` (``sapo_temperature_pos/neg``)."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import GroupNormalized, SoftGate, UnifiedEstimator


@preset("sapo")
def sapo(tau_pos: float = 1.0, tau_neg: float = 1.05) -> UnifiedEstimator:
    """τ_pos = 1.0, τ_neg = 1.05 (paper, TRL and verl defaults); GRPO advantages."""
    return UnifiedEstimator(
        mask=SoftGate(tau_pos=tau_pos, tau_neg=tau_neg),
        reference="old",
        advantage=GroupNormalized(std=True),
        aggregation="seq-mean-token-mean",
        name="sapo",
    )
