"""Rollout correction: reweight or mask the policy loss by π_old(trainer) / π_behaviour(engine).

The rollout engine samples with its own kernels (vLLM, or the transformers engine in a Ray
worker, in bf16), so the log-prob it records for a sampled token differs from the trainer's
ℓ_old even with identical weights: the "on-policy" batch is slightly off-policy (the
trainer/inference mismatch). Per token t of a SAMPLE row, with ℓ_behav the engine's log-prob:

    log r_t = clamp(ℓ_old,t − ℓ_behav,t, −clamp, clamp)            (clamp = 20, verl's bound)

and a detached weight w multiplies each unit's policy loss, value and gradient alike (the
PPO clip, CISPO's weight, SAPO's gate are computed first; KL/entropy/NLL regularizers are
separate terms and are never weighted):

    token_truncate     (TIS, alias ``tis``)       w_t = min(r_t, C)   [or clamp(r_t, lower, upper)]
    token_mask         (alias ``mis_token``)      w_t = r_t · 1[lower ≤ r_t ≤ upper]
    sequence_truncate                             w_i = min(Π_t r_t, C)
    sequence_mask      (alias ``mis_sequence``)   w_i = Π_t r_t · 1[lower ≤ Π_t r_t ≤ upper]
    geometric_mask     (alias ``mis_geometric``)  w_i = 1[lower ≤ exp(mean_t log r_t) ≤ upper]

C = ``cap`` (default 2, verl's token TIS); masks default to [1/C, C]. The geometric mask only
rejects (weight 1 inside, as verl's Geo-RS; typical bounds there are [0.999, 1.001]). Masked
tokens stay in the loss denominator (TRL) unless ``rejection`` removes them from the mask and
every normalizer in ``prepare`` (verl's rejection sampling). Sequence products are taken in log
space and clamped at ±clamp. Metrics (mini-batch, from ``prepare``): ``rollout_ratio_mean``,
``rollout_ratio_max``, ``rollout_weight_mean``, ``rollout_masked_frac`` (mask modes) or
``rollout_truncated_frac`` (truncation modes), and KL(π_behav ‖ π_old) from the engine's
samples as ``rollout_kl_k1`` = mean(−log r) and ``rollout_kl_k3`` = mean(r − 1 − log r).

Design: the correction is not a preset's choice but a property of how the rollouts were made,
so it is attached to every policy-gradient term of any online preset by
``estimator.with_rollout_correction(RolloutCorrection(...))`` (the ``correction`` field of
:class:`~alignlib.estimator.term.PolicyGradientTerm`). Its weights are computed in every call
from the micro-batch's own ``old_logprobs`` (rows are never split across micro-batches, so
sequence modes see whole rows), which is right both when π_old comes from a no-grad pass and
when it is the update's own detached forward; its statistics and the ``rejection`` filter are
computed in ``prepare``, so ``rejection`` needs π_old before ``prepare`` (a no-grad pass).

Which distribution the engines' log-probs describe (``rollout/base.py``): both engines return,
by default (``logprobs_mode: processed``; vLLM ``processed_logprobs``), log_softmax of the
logits after temperature, then top-k, then top-p, renormalized over the kept tokens. The
trainer's ℓ_old is the tempered full-vocabulary log-softmax. With top_p = 1 and top_k = 0 the two
describe the same distribution. With truncation the engine's value is ℓ − log S_t, where S_t ≤ 1
is the tempered mass the top-k/top-p kept, so r_t is biased by the factor S_t (TRL issue #6789:
mean r ≈ S, e.g. ≈ 0.9 at top_p = 0.9, and a sequence product collapses). ``raw`` mode
(vLLM ``raw_logprobs``) is log_softmax(logits) before temperature and truncation: comparable
only when the temperature is 1. The correction compares like with like: the trainer adds its
own log S_t (:func:`kept_log_mass` over its tempered logits with the engine's top-k/top-p) to
the engine's processed log-probs before filling ``batch.behaviour_logprobs``, which puts them
on the trainer's full-vocabulary scale; ``old_logprobs`` (the PPO ratio's π_old) stay untouched.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from alignlib.estimator.batch import Batch, Role
from alignlib.estimator.masks import UnitTerms
from alignlib.estimator.registry import (
    ParameterError,
    RegistryError,
    check_choice,
    check_number,
)
from alignlib.suggest import did_you_mean

MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "geometric_mask")
ALIASES = {
    "tis": "token_truncate",
    "mis_token": "token_mask",
    "mis_sequence": "sequence_mask",
    "mis_geometric": "geometric_mask",
}
"""The short names ``online.rollout_correction.mode`` also accepts."""


@dataclass(frozen=True)
class RolloutCorrection:
    """π_old/π_behaviour weights on SAMPLE rows (see the module docstring for the formulas)."""

    mode: str = "token_truncate"
    """One of MODES or ALIASES (tis, mis_token, mis_sequence, mis_geometric)."""
    cap: float = 2.0
    """C: truncation cap, and the default mask bounds [1/C, C] (verl 2; TRL's default is a
    sequence_mask with upper 3 and no lower bound)."""
    lower: float | None = None
    """Lower bound (masks: default 1/C; truncation: none)."""
    upper: float | None = None
    """Upper bound (default C)."""
    rejection: bool = False
    """Mask modes: masked tokens also leave the loss denominator (removed from the batch mask
    in ``prepare``)."""
    required: bool = True
    """False: a batch without ``behaviour_logprobs`` is left uncorrected instead of refused."""
    clamp: float = 20.0
    """Bound on |log r| (token and sequence level) before any exp."""

    def __post_init__(self) -> None:
        owner = "RolloutCorrection"
        check_choice(owner, "mode", self.mode, (*MODES, *ALIASES))
        object.__setattr__(self, "mode", ALIASES.get(self.mode, self.mode))
        check_number(owner, "cap", self.cap, ge=1, why="the default bounds are [1/C, C]")
        check_number(owner, "lower", self.lower, ge=0, optional=True)
        check_number(owner, "upper", self.upper, gt=0, optional=True)
        check_number(owner, "clamp", self.clamp, gt=0)
        low, high = self.bounds
        if low is not None and high is not None and low > high:
            raise ParameterError(owner, "lower", f"must be <= upper ({high}), got {low}")
        if self.rejection and self.truncates:
            raise ParameterError(owner, "rejection", f"needs a mask mode, not {self.mode!r}")

    @property
    def truncates(self) -> bool:
        return self.mode.endswith("truncate")

    @property
    def per_sequence(self) -> bool:
        """True when one weight covers a whole row (sequence and geometric modes)."""
        return not self.mode.startswith("token")

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        upper = self.cap if self.upper is None else self.upper
        if self.truncates:
            return self.lower, upper
        return (1.0 / self.cap if self.lower is None else self.lower), upper

    @property
    def needs_old_in_prepare(self) -> bool:
        """True when ``prepare`` must see the real π_old (``rejection``): the trainer then takes
        old log-probs from a no-grad pass instead of the update's own forward."""
        return self.rejection

    def requirements(self) -> dict[str, str]:
        needs = {"old_logprobs": "rollout correction compares the trainer's π_old with the engine"}
        if self.required:
            needs["behaviour_logprobs"] = "rollout correction needs the engine's log-probs"
        return needs

    def active(self, batch: Batch) -> bool:
        return batch.behaviour_logprobs is not None and batch.old_logprobs is not None

    def log_ratios(self, batch: Batch, rows: Tensor) -> tuple[Tensor, Tensor]:
        """([R, T] clamped log r_t, 0 off the corrected tokens; [R, T] 1 on corrected tokens:
        valid tokens of the selected SAMPLE rows)."""
        assert batch.old_logprobs is not None and batch.behaviour_logprobs is not None
        dtype = batch.logprobs.dtype
        sample = rows & (batch.role_codes() == int(Role.SAMPLE))
        valid = batch.mask * sample.to(dtype).unsqueeze(-1)
        delta = batch.old_logprobs.detach().to(dtype) - batch.behaviour_logprobs.to(dtype)
        log_r = delta.clamp(-self.clamp, self.clamp)
        return log_r.where(valid > 0, log_r.new_zeros(())), valid

    def level_log_ratios(self, log_r: Tensor, valid: Tensor) -> Tensor:
        """[R, T] the log-ratio each mode tests: per token, or its row's sum / mean."""
        if not self.per_sequence:
            return log_r
        total = log_r.sum(-1, keepdim=True)
        if self.mode == "geometric_mask":
            total = total / valid.sum(-1, keepdim=True).clamp(min=1)
        return total.clamp(-self.clamp, self.clamp).expand_as(log_r)

    def weights(self, batch: Batch, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """([R, T] detached weights, 1 off the corrected tokens; [R, T] bool: tokens the
        mode masked or truncated; [R, T] corrected-token mask)."""
        log_r, valid = self.log_ratios(batch, rows)
        ratio = self.level_log_ratios(log_r, valid).exp()
        low, high = self.bounds
        on = valid > 0
        if self.truncates:
            weight = ratio.clamp(min=low, max=high)
            hit = on & (weight != ratio)
        else:
            inside = (ratio >= low) & (ratio <= high)
            kept = ratio.new_ones(()) if self.mode == "geometric_mask" else ratio
            weight = kept.where(inside, ratio.new_zeros(()))
            hit = on & ~inside
        return weight.where(on, ratio.new_ones(())), hit, valid

    def apply(self, batch: Batch, rows: Tensor, per_sequence_units: bool, terms: UnitTerms) -> None:
        """Multiply the term's per-unit weight, value and penalty by the correction weights."""
        if not self.active(batch):
            return
        weight, _, valid = self.weights(batch, rows)
        if per_sequence_units:
            if not self.per_sequence:
                raise ValueError(
                    f"rollout correction {self.mode!r} weighs tokens, but this term's likelihood "
                    "has one unit per sequence: use sequence_truncate, sequence_mask or "
                    "geometric_mask (or gspo's default token form)"
                )
            # Every corrected token of a row carries the row's weight; other rows get 1.
            has = valid.sum(-1, keepdim=True) > 0
            row = (weight * valid).sum(-1, keepdim=True) / valid.sum(-1, keepdim=True).clamp(min=1)
            weight = row.where(has, row.new_ones(()))
        terms.weight = terms.weight * weight
        terms.value = terms.value * weight
        if terms.penalty is not None:
            terms.penalty = terms.penalty * weight

    def rejected(self, batch: Batch, rows: Tensor) -> Tensor:
        """[R, T] bool: tokens ``rejection`` removes from the batch (mask modes only)."""
        if not (self.rejection and self.active(batch)):
            return torch.zeros_like(batch.mask, dtype=torch.bool)
        return self.weights(batch, rows)[1]

    def statistics(self, batch: Batch, rows: Tensor) -> dict[str, Tensor]:
        """Mini-batch metrics over the corrected tokens (see the module docstring)."""
        if not self.active(batch):
            return {}
        log_r, valid = self.log_ratios(batch, rows)
        weight, hit, _ = self.weights(batch, rows)
        count = valid.sum().clamp(min=1)
        ratio = log_r.exp()

        def mean(values: Tensor) -> Tensor:
            return (values * valid).sum() / count

        hit_key = "rollout_truncated_frac" if self.truncates else "rollout_masked_frac"
        return {
            "rollout_ratio_mean": mean(ratio),
            "rollout_ratio_max": (ratio * valid).max(),
            "rollout_weight_mean": mean(weight),
            hit_key: hit.to(ratio.dtype).sum() / count,
            "rollout_kl_k1": mean(-log_r),
            "rollout_kl_k3": mean(ratio - 1 - log_r),
        }


def rollout_correction(spec: Mapping[str, Any] | None) -> RolloutCorrection | None:
    """Build from a config mapping ``{mode, cap, lower, upper, rejection, ...}`` (None: off);
    an unknown key is refused with a did-you-mean."""
    if spec is None:
        return None
    fields = [f.name for f in dataclasses.fields(RolloutCorrection)]
    for key in spec:
        if key not in fields:
            raise RegistryError(
                f"rollout correction has no parameter {key!r}{did_you_mean(key, fields)}; "
                f"valid: {', '.join(fields)}"
            )
    return RolloutCorrection(**spec)


def kept_log_mass(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
) -> Tensor:
    """[...] log S: log of the tempered full-vocabulary mass that min-p, top-k, then top-p keep.

    ``logits`` is [..., V]. The rule is transformers' warpers in vLLM's order (``MinPLogits
    Warper`` keeps p ≥ min_p · max p; ``TopKLogitsWarper`` keeps ties with the k-th value;
    ``TopPLogitsWarper`` drops the ascending-sorted tokens whose cumulative mass, renormalized
    over what is left, is ≤ 1 − top_p, keeping at least one), which vLLM follows up to ties at
    the boundary. The engine's processed log-prob plus this is the full-vocabulary tempered
    log-prob.
    """
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    if temperature != 1.0:
        logp = torch.log_softmax(logp / temperature, -1)
    minus_inf = logp.new_tensor(float("-inf"))
    kept = logp
    if min_p > 0:  # first, as vLLM: top-p then renormalizes over what min-p kept
        floor = logp.max(-1, keepdim=True).values + math.log(min_p)
        kept = kept.where(logp >= floor, minus_inf)
    if 0 < top_k < logp.shape[-1]:
        kth = logp.topk(top_k, dim=-1).values[..., -1:]
        kept = kept.where(logp >= kth, minus_inf)
    if top_p < 1.0:
        ordered, index = kept.sort(dim=-1)
        drop = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[..., -1] = False
        kept = kept.where(~drop.scatter(-1, index, drop), minus_inf)
    return kept.logsumexp(-1)
