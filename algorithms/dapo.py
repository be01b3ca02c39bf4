"""DAPO (Yu et al. 2025, arXiv 2503.14476): GRPO with clip-higher (ε_low = 0.2, ε_high = 0.28),
a token-level loss (Σ over every token of the mini-batch / their number, eq. 12), no KL, and
three data-side pieces:

- **dynamic sampling** — groups whose rewards are all equal carry no gradient and are dropped,
  and more prompts are sampled until the batch is full: ``online.dynamic_sampling: {enabled:
  true, max_tries: N}`` in the trainer. With ``group_filter`` (default on) the preset also
  drops any such group that is left (after max_tries, or without dynamic sampling) from the loss
  **and** the token-mean denominator, singleton groups included (the paper's 0 < #correct < G);
- **overlong filtering** — truncated samples (finish_reason "length") leave the loss and its
  denominator: done where rows are built (their completion mask set to 0), not in this preset:
  ``online.overlong_filter: true`` (TRL's ``mask_truncated_completions``; verl's DAPO recipe
  leaves it off and keeps only the soft punishment);
- **soft overlong punishment** (eq. 13) — a reward: ``online.rewards: [{name: math},
  {name: soft_overlong, params: {max_length: 20480, cache_length: 4096}}]``
  (:func:`alignlib.rewards.soft_overlong_penalty`).

Checked against verl's DAPO recipe (``clip_ratio_low 0.2``, ``clip_ratio_high 0.28``,
``loss_agg_mode token-mean``, ``overlong_buffer``; its ``clip_ratio_c 10`` dual clip is the
option ``clip_c``, off as in the paper) and TRL ``loss_type="dapo"`` (global token count)."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import GroupFilter, GroupNormalized, PPOClip, UnifiedEstimator


@preset("dapo")
def dapo(
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    group_filter: bool = True,
    clip_c: float | None = None,
) -> UnifiedEstimator:
    """ε_low = 0.2, ε_high = 0.28, token-mean, all-equal groups dropped; no dual clip."""
    clip = PPOClip(eps_low=eps_low, eps_high=eps_high, dual_clip=clip_c)
    return UnifiedEstimator(
        mask=[GroupFilter(), clip] if group_filter else clip,
        reference="old",
        advantage=GroupNormalized(std=True),
        aggregation="token-mean",
        name="dapo",
    )
