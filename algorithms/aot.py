"""AOT (Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal
Transport"), paired: the logistic loss on sorted policy-vs-reference margins over the mini-batch
(TRL's ``loss_type="aot"``)."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import AOTWeights, UnifiedEstimator


@preset("aot")
def aot(beta: float = 0.1, label_smoothing: float = 0.0) -> UnifiedEstimator:
    """β = 0.1 as DPO (TRL's default); ε smooths the logistic as cDPO. The sort spans the
    optimizer mini-batch, so a larger train.batch_size gives finer quantiles (the paper's
    advice: large per-step batches)."""
    return pairwise(AOTWeights(beta, label_smoothing, paired=True), "aot")
