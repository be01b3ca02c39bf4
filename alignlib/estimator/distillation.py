"""On-policy distillation: the student samples, a frozen teacher scores the sampled tokens, and
the per-token log-ratio is the advantage (the reward is the negative reverse KL).

With d_t = log π_old(y_t) − log π_T(y_t) on the student's own samples (π_old: the student that
sampled; π_T: the teacher, held in ``batch.ref_logprobs``),

    per token (Thinking Machines' on-policy distillation, discount 0; TRL's IW-OPD with γ = 0):
        Â_t = −d_t
    return to go (``return_to_go=True``; MiniLLM's sequence-level view, discount 1):
        Â_t = −Σ_{t' ≥ t} d_t'

The return-to-go form is an unbiased estimate of −∇ KL(π_θ ‖ π_T) over whole sequences (the
score-function gradient with causality applied; tests check it against the exact gradient by
enumerating every sequence). The per-token form drops the future terms: lower variance, biased,
and what current recipes use. ``iw_gamma`` > 0 multiplies Â_t by IW-OPD's prefix weight
1 + γ·(1 − Σ_{t'<t}|d_t'| / Σ_t'|d_t'|) (Xie et al. 2026, "On the Position Bias of On-Policy
Distillation"; TRL's ``IWOPDTrainer``), which down-weights the later tokens, whose prefix has
drifted from what the teacher would write.

Â reads the sampling policy's log-probs, so it is computed in each call (on-policy they are the
update's own, detached); everything it uses is row-local, so micro-batching does not change it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor

from alignlib.estimator.advantages import ADVANTAGES, Advantage, AdvantageResult
from alignlib.estimator.batch import Batch
from alignlib.estimator.registry import check_number
from alignlib.estimator.units import Likelihood


@ADVANTAGES.register("opd")
@dataclass(frozen=True)
class TeacherLogRatio(Advantage):
    """Â_t = log π_T(y_t) − log π_old(y_t) per sampled token (see the module docstring)."""

    needs: ClassVar[dict[str, str]] = {
        "old_logprobs": "the distillation advantage log π_T − log π_old needs the log-probs of "
        "the student that sampled",
        "ref_logprobs": "the distillation advantage needs the teacher's log-probs "
        "(model.reference_name_or_path)",
    }
    per_call: ClassVar[bool] = True
    metric_weights: ClassVar[Literal["pair", "summed", "unit"]] = "unit"
    distills: ClassVar[bool] = True
    return_to_go: bool = False
    """Â_t sums the log-ratios of tokens t and after (unbiased for the sequence-level reverse
    KL); False: token t's own (discount 0, the usual choice)."""
    iw_gamma: float = 0.0
    """TRL IW-OPD's prefix weight amplification γ (0: off; TRL's default 0.5)."""
    iw_eps: float = 1e-8
    """Floor of the row's Σ|d| in the prefix weight (TRL's ``iw_opd_epsilon``)."""

    def __post_init__(self) -> None:
        check_number("TeacherLogRatio", "iw_gamma", self.iw_gamma, ge=0)
        check_number("TeacherLogRatio", "iw_eps", self.iw_eps, gt=0)

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        """[R, T] Â on the selected rows' completion tokens; ``row_metrics['reverse_kl']`` is
        each row's Σ_t d_t (a unit-mean over the mini-batch: the per-token reverse KL)."""
        assert batch.old_logprobs is not None and batch.ref_logprobs is not None
        valid = batch.mask * rows.to(batch.mask.dtype).unsqueeze(-1)
        log_ratio = (batch.ref_logprobs.detach() - batch.old_logprobs.detach()) * valid
        advantage = log_ratio
        if self.return_to_go:
            advantage = log_ratio.flip(-1).cumsum(-1).flip(-1) * valid
        if self.iw_gamma > 0:
            magnitude = log_ratio.abs()
            before = magnitude.cumsum(-1) - magnitude
            total = magnitude.sum(-1, keepdim=True).clamp(min=self.iw_eps)
            advantage = advantage * (1 + self.iw_gamma * (1 - before / total))
        return AdvantageResult(advantage, row_metrics={"reverse_kl": -log_ratio.sum(-1)})
