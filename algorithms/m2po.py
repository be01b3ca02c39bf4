"""M2PO (Zheng et al. 2025, "Prosperity before Collapse: How Far Can Off-Policy RL Reach with
Stale Data on LLMs?", arXiv 2510.01161): GRPO's advantage and token-mean, with PPO's ε-clip
replaced by a bound on the second moment of the log importance ratio, so stale rollouts train
without the clip's masking of high-entropy tokens.

``form="paper"``: J = (1/Σ|o_i|) Σ_i Σ_t M_{i,t} ρ_{i,t} Â_i with ρ = π_θ/π_old unclipped and
M masking the tokens of largest (log π_θ − log π_behaviour)² until the batch's mean of the rest
is below τ (``threshold``, 0.04; the paper's ≤ differs only at an exact tie); masked tokens
stay in the denominator.

``form="released"`` (Infini-AI-Lab/M2PO, ``compute_m2po_policy_loss``, ``M2_budget=0.04``):
PPO's clipped loss whose bounds [e^{−τ}, e^τ] come from the budget over the harmful tokens
(Â > 0 with ρ > 1, Â < 0 with ρ < 1); nothing is clipped while their mean squared log-ratio is
within it; ``min_eps_low`` / ``min_eps_high`` are its optional ``miniclip`` floors.

Both read the present policy: ``scope="global"`` computes the statistic once per optimizer
mini-batch (a no-grad pass; the gradient does not depend on the micro-batch split),
``"per_microbatch"`` per forward pass as the reference code. In a synchronous on-policy run the
first mini-batch sees ρ = 1 and nothing is masked or clipped; the bound acts on later
mini-batches, on stale rollouts (``online.max_staleness``, with a rollout correction carrying
π_old/π_engine) and on an engine that drifts from the trainer (vLLM). AReaL's form (π_old
against the engine, dropped tokens out of the normalizers) is ``algorithm.second_moment_mask``
on any method."""

from typing import Literal

from alignlib.algorithms.registry import preset
from alignlib.estimator import GroupNormalized, M2POClip, M2POMask, OldPolicy, UnifiedEstimator


@preset("m2po")
def m2po(
    form: Literal["paper", "released"] = "paper",
    threshold: float = 0.04,
    min_eps_low: float | None = None,
    min_eps_high: float | None = None,
    scope: Literal["global", "per_microbatch"] = "global",
) -> UnifiedEstimator:
    """τ = 0.04 (both references), GRPO advantages (std-normalized), token-mean, ratio
    unclamped; ``min_eps_*`` apply to the released form only."""
    if form == "paper":
        if min_eps_low is not None or min_eps_high is not None:
            raise ValueError(
                "m2po: min_eps_low / min_eps_high floor the released form's clip; the paper's "
                "form has no clip (set form: released, or drop them)"
            )
        mask: M2POMask | M2POClip = M2POMask(threshold=threshold, scope=scope)
    elif form == "released":
        mask = M2POClip(
            budget=threshold, min_eps_low=min_eps_low, min_eps_high=min_eps_high, scope=scope
        )
    else:
        raise ValueError(f"m2po: form must be 'paper' or 'released', got {form!r}")
    return UnifiedEstimator(
        mask=mask,
        reference=OldPolicy(clamp=None),
        advantage=GroupNormalized(std=True),
        aggregation="token-mean",
        name="m2po",
    )
