"""The `algorithm:` section: a preset with overrides, or named components, the two options
every preference-pair loss takes (LD-DPO, WPO), and the two masks any policy-gradient method
takes (forking tokens, off-policy sequence masking)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from alignlib.config.section import Section


class ComponentSpec(Section):
    name: str
    """Registered component name."""
    params: dict[str, Any] = {}
    """Keyword arguments of the component."""


class ComponentsConfig(Section):
    mask: list[str | ComponentSpec] = []
    """Stabilization masks, applied in order (`ppo_clip`, `clip_cov`, `kl_cov`, `group_filter`,
    ...)."""
    reference: str | ComponentSpec = "current"
    """Reference denominator: `current`, `old`, `constant`, `shaped`."""
    advantage: str | ComponentSpec = "constant"
    """Advantage: `constant`, `grpo`, `rloo`, `reinforce_pp`, or a preference weight (`dpo`,
    ...)."""
    likelihood: str | ComponentSpec = "token"
    """`token`, `sequence-sum`, `sequence-mean`, `sequence-mean-token`, `score` or
    `length-desensitized` (LD-DPO, params {alpha})."""
    aggregation: str | ComponentSpec = "token-mean"
    """`token-mean`, `seq-mean-token-sum`, `seq-mean-token-mean`, `seq-mean-token-sum-norm`,
    `pair-mean`."""
    regularizers: list[str | ComponentSpec] = []
    """Extra terms: `kl`, `entropy`, `nll`."""


class MixEntry(Section):
    name: str
    """A preset from `alignlib.algorithms.available()`."""
    params: dict[str, Any] = {}
    """Overrides of its hyperparameters."""
    weight: float = Field(1.0, allow_inf_nan=False)
    """Its loss's weight in the sum (TRL's `loss_weights`)."""


class AlgorithmConfig(Section):
    name: str | None = "dpo"
    """A preset from `alignlib.algorithms.available()`; set to null to use `components` instead."""
    params: dict[str, Any] = {}
    """Overrides of the preset's hyperparameters (e.g. {beta: 0.05})."""
    components: ComponentsConfig | None = None
    """Build the estimator from components instead of a preset."""
    mix: list[MixEntry] | None = None
    """A weighted sum of presets on the same rows instead of one (TRL's `loss_type` list with
    `loss_weights`), each entry {name, params, weight}: e.g. [{name: dpo, weight: 0.8}, {name:
    bco_pair, weight: 0.2}, {name: sft, params: {rows: chosen}}] is MPO (the `mpo` preset).
    Each entry's metrics are logged under its name (a repeated one gets `_2`)."""
    ld_alpha: float | None = Field(None, ge=0, le=1)
    """LD-DPO (Liu et al. 2024; TRL's `ld_alpha`) for the preference-pair losses (the DPO
    family): the tokens of a response beyond the length its pair shares count α in its
    log-likelihood, so the longer response's verbose tail weighs less (1: plain DPO; 0: not at
    all; the paper's best values lie between 0.3 and 0.8 by model). Null: off."""
    wpo: bool = False
    """WPO (Zhou et al. 2024; TRL's `use_weighting`) for the preference-pair losses: each
    pair's loss times w(y_w)·w(y_l), w(y) = exp(mean_t(log π(y_t) − log Σ_v π(v)²)), the
    present policy's aligned probability of the response (no gradient through w), so pairs
    the policy would itself produce count more. log Σ_v π(v)² is read off the LM head's logits
    in the training forward itself (it then runs padded, not packed)."""

    high_entropy: dict[str, Any] | None = None
    """Train on the forking tokens only (Wang et al. 2025, "Beyond the 80/20 Rule"; the
    reference code's `entropy_top_ratio`, TRL's `top_entropy_quantile`): the `high_entropy`
    mask added to every policy-gradient term that trains on rollouts, so only the top-ρ tokens
    by the present policy's entropy pass gradient. Its params: `ratio` (ρ, default 0.2),
    `select` (`top_k`: the ⌈ρN⌉ highest, the reference code; `quantile`: H ≥ the
    (1 − ρ)-quantile, the paper's threshold, TRL's), `denominator` (`selected`: the loss is
    averaged over the kept tokens, the reference code; `all`: over every token, the paper's
    objective, TRL's), `scope` (`global`: one selection per mini-batch; `per_microbatch`: per
    forward pass, as both references do). `{}`: the defaults; null: off."""

    off_policy_mask: dict[str, Any] | None = None
    """Off-policy sequence masking (DeepSeek-V3.2, eq. 9; TRL's `off_policy_mask_threshold`):
    a sampled sequence with a negative advantage whose mean log π_behaviour − log π_θ over its
    tokens exceeds `delta` passes no gradient (it still counts in the normalizers). Added to
    every policy-gradient term that trains on rollouts; π_behaviour is the engine's log-probs
    (put on the trainer's scale, as a rollout correction does). E.g. {delta: 0.5}; null: off."""

    second_moment_mask: dict[str, Any] | None = None
    """M2PO's second-moment trust region (Zheng et al. 2025; AReaL's `m2_threshold`), for
    stale or mismatched rollouts (`online.max_staleness`, vLLM): over each mini-batch the tokens
    with the largest (log π_old − log π_behaviour)² leave the loss and its normalizers until the
    mean of the rest is below `threshold`. Added to every policy-gradient term that trains on
    rollouts; π_behaviour is the engine's log-probs. E.g. {threshold: 0.04}; null: off."""

    adaptive_entropy: dict[str, Any] | None = None
    """Skywork-OR1's adaptive entropy control (TRL's `use_adaptive_entropy`), added to any
    method: an entropy bonus −c·H that acts only while the token-mean entropy H is at or
    below `target`, c rising by `delta` after each optimizer step that ends there and falling
    otherwise, within [`coef_min`, `coef_max`], from `coef` (0). Logged: `entropy/mean`,
    `entropy/coef`. E.g. {target: 0.5}; null: off."""

    @model_validator(mode="after")
    def _one_source(self) -> AlgorithmConfig:
        others = self.components is not None or self.mix is not None
        if others and "name" not in self.model_fields_set:
            self.name = None  # the default preset gives way to components or a mix
        given = [k for k in ("name", "components", "mix") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of algorithm.name, algorithm.components and algorithm.mix"
                + (f" (given: {', '.join(given)})" if given else "")
            )
        if self.mix is not None and self.params:
            raise ValueError(
                "algorithm.params overrides algorithm.name's preset; with algorithm.mix give "
                "each entry its own params"
            )
        if self.mix == []:
            raise ValueError("algorithm.mix is empty: list at least one preset")
        return self
