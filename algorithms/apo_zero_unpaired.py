"""APO-zero on unpaired rows (D'Oosterlinck et al. 2024, "Anchored Preference Optimization";
TRL KTOTrainer's ``loss_type="apo_zero_unpaired"``): KTO's data and weights with the reference
point fixed at z₀ = 0, so no KL rows are built or scored. A desirable completion loses
λ_D·(1 − σ(β·r)) and an undesirable one λ_U·σ(β·r), r = log π(y) − log π_ref(y): it raises
desirable completions and lowers undesirable ones outright, for when the desirable ones are
better than what the model writes now."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import KTOWeights, Role, Rows, UnifiedEstimator


@preset("apo_zero_unpaired")
def apo_zero_unpaired(
    beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
) -> UnifiedEstimator:
    """TRL's defaults β = 0.1, λ_D = λ_U = 1; the loss is a mean over the mini-batch's
    examples. Data: kto rows {prompt, completion, label} (or preference rows with
    data.unpair)."""
    return UnifiedEstimator(
        advantage=KTOWeights(beta, desirable_weight, undesirable_weight, reference_point="zero"),
        likelihood="sequence-sum",
        aggregation="seq-mean-token-sum",
        rows=Rows.of(Role.CHOSEN, Role.REJECTED),
        name="apo_zero_unpaired",
    )
