"""GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071, eq. 5-7):
the importance ratio of a whole sequence, length-normalized, clipped per sequence:

    s_i = exp((1/|y_i|) Σ_t (ℓ_t − ℓ_old,t))
    loss = mean_i −min(s_i Â_i, clip(s_i, 1 − ε_low, 1 + ε_high) Â_i)

with GRPO's group-normalized Â and ε_low = 3e-4, ε_high = 4e-4 (the paper's; no dual clip).

Checked against verl ``compute_policy_loss_gspo`` (core_algos.py: GSPO-token's
s_i,t = sg[s_i]·π_t/sg[π_t], seq-mean-token-mean) and TRL ``importance_sampling_level=
"sequence"`` (GRPOTrainer._compute_loss: mean token log-ratio per row, then the usual clip).
``level="token"`` (default) is GSPO-token, per-token units of value l̄ — the same loss and
gradient when Â is per sequence, and per-token weights (rollout correction) apply token by
token as in verl; ``level="sequence"`` is eq. 5 literally: one unit per sequence
(sequence-mean likelihood, seq-mean-token-sum = the mean over sequences), where only the
sequence/geometric rollout-correction modes apply. log s_i is clamped at ±20 before exp
(verl clamps at +10); beyond that the gradient is 0."""

from typing import Literal

from alignlib.algorithms.registry import preset
from alignlib.estimator import GroupNormalized, PPOClip, UnifiedEstimator
from alignlib.estimator.registry import check_choice


@preset("gspo")
def gspo(
    eps_low: float = 3e-4, eps_high: float = 4e-4, level: Literal["token", "sequence"] = "token"
) -> UnifiedEstimator:
    """ε_low = 3e-4, ε_high = 4e-4 (paper §5); GRPO advantages (std-normalized)."""
    check_choice("gspo", "level", level, ("token", "sequence"))
    per_token = level == "token"
    return UnifiedEstimator(
        mask=PPOClip(eps_low=eps_low, eps_high=eps_high),
        reference="old",
        advantage=GroupNormalized(std=True),
        likelihood="sequence-mean-token" if per_token else "sequence-mean",
        aggregation="seq-mean-token-mean" if per_token else "seq-mean-token-sum",
        name="gspo",
    )
