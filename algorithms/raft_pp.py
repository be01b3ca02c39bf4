"""RAFT++ (Xiong et al. 2025, "A Minimalist Approach to LLM Reasoning: from Rejection Sampling to
Reinforce", arXiv 2504.11343, §2): rejection-sampling fine-tuning (RAFT: sample n answers per
prompt, keep the positively rewarded ones, maximize their likelihood) made an on-policy step
with PPO's importance ratio ρ = π_θ/π_old and its clip at [1 − ε, 1 + ε]. The paper finds it
close to GRPO with faster early progress, and its entropy collapsing sooner (no negatives).

``form="paper"``: the rejected rows leave the batch (a row filter: reward > 0), the kept ones
train with Â = 1, loss = (1/|D₊|) Σ_{y ∈ D₊} (1/|y|) Σ_t −min(ρ_t, clip(ρ_t, 1 − ε, 1 + ε)).

``form="released"`` (RLHFlow/Minimal-RL, ``adv_estimator=raft`` with ``policy_loss=plusplus``):
Â = max(R, 0) on every row (with its 0/1 math reward, the indicator of a correct answer),
verl's PPO loss, token-mean over every token of the mini-batch, so the rejected rows stay in
the denominator.

``importance_sampling=False`` is plain RAFT (``policy_loss=vanilla``): −Â·log π, no ratio, no
clip. Both scripts add verl's ``low_var_kl`` loss to π_ref at 0.001 (k3; verl also clamps it
to ±10, which the k3 here does not), aggregated like the policy loss."""

from typing import Literal

from alignlib.algorithms.registry import kl_regularizers, preset
from alignlib.estimator import (
    AGGREGATIONS,
    Advantage,
    ConstantAdvantage,
    Mask,
    PositiveReward,
    PPOClip,
    RewardFilter,
    UnifiedEstimator,
)


@preset("raft_pp")
def raft_pp(
    form: Literal["paper", "released"] = "paper",
    importance_sampling: bool = True,
    eps: float = 0.2,
    kl_coef: float = 0.001,
    kl_estimator: str = "k3",
) -> UnifiedEstimator:
    """ε = 0.2 and the KL to π_ref at 0.001 (k3) as the released scripts; the paper's
    per-sample token mean over the positive rows (``released``: token-mean, Â = max(R, 0))."""
    masks: list[Mask] = []
    advantage: Advantage
    if form == "paper":
        masks.append(RewardFilter(threshold=0.0))
        advantage, aggregation = ConstantAdvantage(1.0), "seq-mean-token-mean"
    elif form == "released":
        advantage, aggregation = PositiveReward(), "token-mean"
    else:
        raise ValueError(f"raft_pp: form must be 'paper' or 'released', got {form!r}")
    if importance_sampling:
        masks.append(PPOClip(eps_low=eps, eps_high=eps))
    agg = AGGREGATIONS.resolve(aggregation)
    return UnifiedEstimator(
        mask=masks or None,
        reference="old" if importance_sampling else "current",
        advantage=advantage,
        aggregation=agg,
        regularizers=kl_regularizers(kl_coef, kl_estimator, agg),
        name="raft_pp",
    )
