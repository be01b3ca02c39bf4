"""LUSPO (arXiv 2602.05261, "Length-Unbiased Sequence Policy Optimization"): GSPO whose
per-sequence loss is weighed by the sequence's length, removing the bias toward short responses
that averaging sequence losses gives,

    loss = mean_i |y_i| · −min(s_i Â_i, clip(s_i, 1 − ε_low, 1 + ε_high) Â_i),
    s_i = exp((1/|y_i|) Σ_t (ℓ_t − ℓ_old,t)),

with GRPO's std-normalized Â and GSPO's ε (3e-4, 4e-4). As TRL's ``loss_type="luspo"`` with
``importance_sampling_level="sequence"`` (the same loss and gradient, tested): GSPO-token's
per-token units summed within each sequence (seq-mean-token-sum), not averaged."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import GroupNormalized, PPOClip, UnifiedEstimator


@preset("luspo")
def luspo(eps_low: float = 3e-4, eps_high: float = 4e-4) -> UnifiedEstimator:
    """GSPO's ε_low = 3e-4, ε_high = 4e-4; GRPO advantages."""
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps_low, eps_high=eps_high),
        reference="old",
        advantage=GroupNormalized(std=True),
        likelihood="sequence-mean-token",
        aggregation="seq-mean-token-sum",
        name="luspo",
    )
