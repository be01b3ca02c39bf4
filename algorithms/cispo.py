"""CISPO (MiniMax-M1, arXiv 2506.13585, §3.1 eq. 4-5): REINFORCE with a clipped,
stop-gradient importance weight, so no token ever loses its gradient (PPO's clip drops the
gradient of clipped tokens):

    loss = (1/Σ|y_i|) Σ_i Σ_t −sg[clip(ρ_t, 1 − ε_low, 1 + ε_high)] · Â_i · ℓ_t

token-mean over the mini-batch, group-normalized Â. Checked against verl
``compute_policy_loss_cispo`` (clamp(ρ, 1−ε_low, 1+ε_high).detach() · Â · log π, token-mean)
and TRL ``loss_type="cispo"`` (clamp(ρ, max=epsilon_high).detach(): TRL's ``epsilon_high`` is
the absolute cap 1 + ε_high here). MiniMax tunes only ε_high and sets ε_low large (no floor):
``eps_low=None``."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import ClippedISWeight, GroupNormalized, UnifiedEstimator


@preset("cispo")
def cispo(eps_high: float = 0.2, eps_low: float | None = None) -> UnifiedEstimator:
    """ε_high = 0.2 (cap 1.2), no floor (ε_low = None; verl's example: 10), token-mean."""
    return UnifiedEstimator(
        mask=ClippedISWeight(eps_low=eps_low, eps_high=eps_high),
        reference="current",
        advantage=GroupNormalized(std=True),
        aggregation="token-mean",
        name="cispo",
    )
