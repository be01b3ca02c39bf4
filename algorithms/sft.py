"""SFT: the UPGE with Â = 1 and π_ref = π_θ, i.e. token-mean negative log-likelihood."""

from alignlib.algorithms.registry import preset
from alignlib.estimator import ALL_ROWS, UnifiedEstimator


@preset("sft")
def sft(aggregation: str = "token-mean") -> UnifiedEstimator:
    """Supervised fine-tuning: −mean_tokens log π(y_t) over every completion token."""
    return UnifiedEstimator(
        reference="current",
        advantage="constant",
        aggregation=aggregation,
        rows=ALL_ROWS,
        name="sft",
    )
