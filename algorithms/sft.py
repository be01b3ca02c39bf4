"""SFT: the UPGE with Â = 1 and π_ref = π_θ, i.e. token-mean negative log-likelihood."""

from typing import Literal

from alignlib.algorithms.registry import preset
from alignlib.estimator import ALL_ROWS, Role, Rows, UnifiedEstimator
from alignlib.estimator.registry import check_choice


@preset("sft")
def sft(
    aggregation: str = "token-mean", rows: Literal["all", "chosen"] = "all"
) -> UnifiedEstimator:
    """Supervised fine-tuning: −mean_tokens log π(y_t) over every completion token; ``rows:
    chosen`` on preference pairs trains on the chosen responses only (TRL's `sft` loss type in
    a DPO mixture: MPO, RPO as TRL writes it)."""
    check_choice("sft", "rows", rows, ("all", "chosen"))
    return UnifiedEstimator(
        reference="current",
        advantage="constant",
        aggregation=aggregation,
        rows=ALL_ROWS if rows == "all" else Rows.of(Role.CHOSEN),
        name="sft",
    )
