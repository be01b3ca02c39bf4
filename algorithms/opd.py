"""On-policy distillation (Agarwal et al. 2024 GKD's on-policy setting; Thinking Machines'
"On-Policy Distillation", Lu et al. 2025; TRL's ``IWOPDTrainer``): the student samples, the
teacher (``model.reference_name_or_path``, same tokenizer) scores each sampled token, and the
per-token reverse KL is the negative advantage, Â_t = log π_T(y_t) − log π_old(y_t).

Per token −Â_t·log π_θ(y_t), token-mean: TRL's ``_compute_iw_opd_loss`` (γ = ``iw_gamma``)
exactly, and the Thinking Machines recipe with discount 0. With several mini-batches,
``reference="old"`` uses their importance-sampling form ρ·Â (the same gradient on the first).
GKD's full-vocabulary divergences (TRL's ``DistillationTrainer``) need every logit, not the
sampled token's, and are not a UPGE composition; rewards play no part (mix with an RL preset
for both: ``grpo() + 0.5 * opd()``)."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import TeacherLogRatio, UnifiedEstimator


@preset("opd")
def opd(
    return_to_go: bool = False,
    iw_gamma: float = 0.0,
    reference: str = "current",
) -> UnifiedEstimator:
    """Discount 0 (Thinking Machines; TRL's IW-OPD with ``iw_gamma=0``); ``return_to_go`` sums
    the log-ratios of later tokens (the unbiased sequence-level reverse-KL gradient);
    ``iw_gamma`` is IW-OPD's prefix weight (Xie et al. 2026; TRL's default 0.5)."""
    return UnifiedEstimator(
        reference=reference,
        advantage=TeacherLogRatio(return_to_go=return_to_go, iw_gamma=iw_gamma),
        aggregation="token-mean",
        name="opd",
    )
