"""GMPO (Zhao et al. 2025, "Geometric-Mean Policy Optimization", arXiv 2507.20673): GRPO that
maximizes the geometric mean of the token-level rewards instead of their arithmetic mean,

    loss = mean_i −Â_i · exp((1/|y_i|) Σ_t c_t),   c_t = min(δ_t, ε_high) if Â_i > 0
                                                      max(δ_t, −ε_low)  otherwise

δ_t = ℓ_t − ℓ_old,t, so an outlier token ratio moves the row's weight by its |y|-th root.
ε_low = ε_high = 0.4 in log space (a ratio range (e^−0.4, e^0.4), wider than PPO's),
GRPO's std-normalized advantages, a plain mean over sequences; no KL by default (``kl_coef``
adds GRPO's k3 penalty, sequence-averaged, as TRL's GMPOTrainer does with β). Checked against
verl's ``geo_mean`` policy loss and TRL's ``GMPOTrainer._compute_loss`` (the same loss and
gradient from the same inputs)."""

from alignlib.algorithms.registry import kl_regularizers, preset
from alignlib.estimator import AGGREGATIONS, GeometricMeanClip, GroupNormalized, UnifiedEstimator


@preset("gmpo")
def gmpo(eps_low: float = 0.4, eps_high: float = 0.4, kl_coef: float = 0.0) -> UnifiedEstimator:
    """The paper's ε = 0.4 (log space) both ways; TRL's β = 0."""
    aggregation = AGGREGATIONS.resolve("seq-mean-token-mean")
    return UnifiedEstimator(
        mask=GeometricMeanClip(eps_low=eps_low, eps_high=eps_high),
        reference="current",
        advantage=GroupNormalized(std=True),
        likelihood="token",
        aggregation=aggregation,
        regularizers=kl_regularizers(kl_coef, "k3", aggregation),
        name="gmpo",
    )
