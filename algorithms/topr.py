"""TOPR (Le Roux, Bellemare et al. 2025, "Tapered Off-Policy REINFORCE: Stable and efficient
reinforcement learning for LLMs", arXiv 2503.14286, eq. 8): REINFORCE whose negative examples
are importance-weighted with a truncated ratio and whose positive examples are not weighted
at all,

    ∇J = Σ_{Â_i ≥ 0} Â_i ∇log π(y_i) + Σ_{Â_i < 0} sg[clip(π(y_i)/μ(y_i), 0, 1)] Â_i ∇log π(y_i),

Â_i = R_i − c (the paper's REINFORCE baseline c, which also sets which rows are negative),
log π(y) = Σ_t ℓ_t and the mean over sequences (``seq-mean-token-sum``); μ is the policy that
sampled the rows (π_old). Positive rows are pushed up like SFT however unlikely they became;
a negative row's push down fades as the policy leaves it, which bounds the objective
(Prop. 3.2) and keeps off-policy reuse stable without a KL term.

The released implementations differ from the paper and are offered too: ROLL's
``pg_variant: topr`` and Trinity-RFT's ``topr`` use each token's own ratio (``level="token"``),
an advantage in place of R − c (e.g. ``advantage="grpo"``), and ROLL per-sign factors
(``positive_weight``, ``negative_weight``) and any aggregation (Trinity: ``token-mean``)."""

from alignlib.algorithms.registry import kl_regularizers, preset
from alignlib.estimator import (
    AGGREGATIONS,
    Advantage,
    FixedBaseline,
    TaperedISWeight,
    UnifiedEstimator,
)


@preset("topr")
def topr(
    baseline: float = 0.0,
    level: str = "sequence",
    positive_weight: float = 1.0,
    negative_weight: float = 1.0,
    advantage: Advantage | str | None = None,
    aggregation: str = "seq-mean-token-sum",
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
) -> UnifiedEstimator:
    """The paper: Â = R − c with c = 0, the sequence ratio, weights 1, seq-mean-token-sum,
    no KL. ``advantage`` replaces R − c (ROLL, Trinity-RFT: any advantage estimator);
    ``kl_coef`` > 0 adds a KL to π_ref (ROLL's ``use_kl_loss``)."""
    agg = AGGREGATIONS.resolve(aggregation)
    return UnifiedEstimator(
        mask=TaperedISWeight(
            level=level,  # type: ignore[arg-type]
            positive_weight=positive_weight,
            negative_weight=negative_weight,
        ),
        reference="current",
        advantage=FixedBaseline(baseline=baseline) if advantage is None else advantage,
        aggregation=agg,
        regularizers=kl_regularizers(kl_coef, kl_estimator, agg),
        name="topr",
    )
