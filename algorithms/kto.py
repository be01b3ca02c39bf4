"""KTO (Ethayarajh et al. 2024): unpaired desirable / undesirable completions, each against a
reference point z₀ = max(0, KL estimate) from mismatched pairs (alignlib.estimator.kto)."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import KTOWeights, Role, Rows, UnifiedEstimator


@preset("kto")
def kto(
    beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
) -> UnifiedEstimator:
    """KTO with the paper's and TRL's defaults β = 0.1, λ_D = λ_U = 1; the loss is a mean over
    the mini-batch's examples. Data: kto rows {prompt, completion, label}."""
    return UnifiedEstimator(
        advantage=KTOWeights(beta, desirable_weight, undesirable_weight),
        likelihood="sequence-sum",
        aggregation="seq-mean-token-sum",
        rows=Rows.of(Role.CHOSEN, Role.REJECTED),
        name="kto",
    )
