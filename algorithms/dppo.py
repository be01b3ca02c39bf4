"""DPPO (Qi et al. 2026, "Rethinking the Trust Region in LLM Reinforcement Learning", arXiv
2602.04879): PPO with its ratio clip replaced by a trust region on the divergence between the
policy and the one that sampled, estimated per token on the two-outcome distribution {sampled
token, the rest} (Binary-TV by default: p − q; Binary-KL as an option),

    loss = (1/Σ|y|) Σ_t −sg[min(ρ_t, c)] · M_t · Â · log π(y_t),   ρ_t = π(y_t)/μ(y_t),

M_t = 0 where the move exceeds δ in the direction Â pushes. μ is the engine that sampled (its
log-probs; π_old without them). As the authors' ``core_algos.py`` (``dppo_binary_tv``, c = 10,
GRPO's advantage, token-mean). prime-rl's default loss is the same TV mask with no cap and
R − mean_group: ``ratio_cap=None, std=False, kl_tau=1e-3`` adds its τ·(log π/π_old)² (prime-rl
measures it from the engine's log-probs, alignlib from π_old, the trainer's recompute)."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import DivergenceTrustRegion, GroupNormalized, KLPenalty, UnifiedEstimator


@preset("dppo")
def dppo(
    divergence: str = "tv",
    delta_low: float = 0.2,
    delta_high: float = 0.2,
    anchor: str = "sampling",
    ratio_cap: float | None = 10.0,
    std: bool = True,
    kl_tau: float = 0.0,
) -> UnifiedEstimator:
    """Binary-TV, δ = 0.2 both ways, measured from the sampling engine, c = 10, GRPO's Â;
    ``kl_tau`` > 0: + τ·(log π/π_old)² token-mean (prime-rl: 1e-3)."""
    mask = DivergenceTrustRegion(
        divergence=divergence,  # type: ignore[arg-type]
        delta_low=delta_low,
        delta_high=delta_high,
        anchor=anchor,  # type: ignore[arg-type]
        ratio_cap=ratio_cap,
    )
    kl = [KLPenalty(coef=2 * kl_tau, estimator="k2", to="old")] if kl_tau else []
    return UnifiedEstimator(
        mask=mask,
        reference="current",
        advantage=GroupNormalized(std=std),
        aggregation="token-mean",
        regularizers=kl,
        name="dppo",
    )
