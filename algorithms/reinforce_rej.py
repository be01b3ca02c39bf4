"""Reinforce-Rej (Xiong et al. 2025, "A Minimalist Approach to LLM Reasoning: from Rejection
Sampling to Reinforce", arXiv 2504.11343, §4): REINFORCE with PPO's clipped ratio, on the
prompts whose answers are neither all right nor all wrong. The paper traces GRPO's edge over
plain REINFORCE to dropping the all-wrong prompts, not to its mean/std normalization, and finds
Reinforce-Rej as good as GRPO with a smaller KL to the start.

``form="paper"``: the prompts whose rewards are all equal leave the batch (DAPO's group
filter), Â = R − c on the rest (c = ``baseline``, 0: the raw reward; the paper's rewards are
±1: with a 0/1 reward give it ``weight: 2`` and set ``baseline: 1``), loss = (1/|D|) Σ_y
(1/|y|) Σ_t −min(ρ_t Â, clip(ρ_t, 1 − ε, 1 + ε) Â) (PPO's form: the paper's min(ρ, clip ρ)·R
read as its objective for either sign of R).

``form="released"`` (RLHFlow/Minimal-RL, ``adv_estimator=reinforce_rej``,
``policy_loss=plusplus``): Â = R − c where the group's rewards differ and 0 where they are all
equal, those rows kept in the denominator; verl's PPO loss with its dual clip (c = 3 for
Â < 0), token-mean over the mini-batch. Its scripts grade with math-verify's 0/1, so with
c = 0 only the right answers of the mixed prompts move. Both scripts add the KL to π_ref at
0.001 (k3)."""

from typing import Literal

from alignlib.algorithms.registry import kl_regularizers, preset
from alignlib.estimator import (
    AGGREGATIONS,
    Advantage,
    FixedBaseline,
    GroupFilter,
    Mask,
    MixedGroupReward,
    PPOClip,
    UnifiedEstimator,
)


@preset("reinforce_rej")
def reinforce_rej(
    form: Literal["paper", "released"] = "paper",
    baseline: float = 0.0,
    eps: float = 0.2,
    kl_coef: float = 0.001,
    kl_estimator: str = "k3",
) -> UnifiedEstimator:
    """ε = 0.2, the raw reward (c = 0), KL to π_ref 0.001 (k3) as the released scripts; the
    paper's group filter and per-sample token mean (``released``: zero advantages kept in a
    token-mean, dual clip 3)."""
    masks: list[Mask]
    advantage: Advantage
    if form == "paper":
        masks = [GroupFilter(), PPOClip(eps_low=eps, eps_high=eps)]
        advantage, aggregation = FixedBaseline(baseline=baseline), "seq-mean-token-mean"
    elif form == "released":
        masks = [PPOClip(eps_low=eps, eps_high=eps, dual_clip=3.0)]
        advantage, aggregation = MixedGroupReward(baseline=baseline), "token-mean"
    else:
        raise ValueError(f"reinforce_rej: form must be 'paper' or 'released', got {form!r}")
    agg = AGGREGATIONS.resolve(aggregation)
    return UnifiedEstimator(
        mask=masks,
        reference="old",
        advantage=advantage,
        aggregation=agg,
        regularizers=kl_regularizers(kl_coef, kl_estimator, agg),
        name="reinforce_rej",
    )
