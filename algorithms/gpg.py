"""GPG (Chu et al. 2025, "GPG: A Simple and Strong Reinforcement Learning Baseline for Model
Reasoning", arXiv 2504.02546): plain policy gradient, no surrogate ratio, no clip, no critic,
no reference model,

    loss = (1/Σ_i |y_i|) Σ_i Σ_t −Â_i · log π(y_i,t),   Â_i = α · (R_i − mean_group(R)),

with α = B / (B − M), M the rows of groups whose rewards are all equal (they carry no
gradient, and without α they would shrink the others' share of the token mean). As the
authors' ``gpg_trainer.py`` (``adjust_gd``; ``scale_rewards``: the group std as F_norm, off
in their recipes) and verl's ``gpg`` (which counts α over the nonzero rewards instead:
``alpha="nonzero_rewards"``). The authors' trainer can also resample until B − M ≥ B/2
(``min_inverse_alpha``): with alignlib's dynamic sampling the batch holds only groups with a
signal and α = 1."""

from alignlib.algorithms.registry import kl_regularizers, preset
from alignlib.estimator import AGGREGATIONS, CorrectedGroupMean, UnifiedEstimator


@preset("gpg")
def gpg(
    alpha: str = "valid_groups",
    std: bool = False,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
) -> UnifiedEstimator:
    """α = B/(B − M) (``valid_groups``; verl: ``nonzero_rewards``; ``none``), no std division,
    token-mean; ``kl_coef`` > 0 adds the KL to π_ref (k3, token-mean) that verl's GPG page
    offers as an extension (the paper has none)."""
    agg = AGGREGATIONS.resolve("token-mean")
    return UnifiedEstimator(
        reference="current",
        advantage=CorrectedGroupMean(alpha=alpha, std=std),  # type: ignore[arg-type]
        aggregation=agg,
        regularizers=kl_regularizers(kl_coef, kl_estimator, agg),
        name="gpg",
    )
