"""RPO (Liu et al. 2024): DPO plus an SFT term on the chosen response.

Note: TRL's ``loss_type=["sigmoid","sft"], loss_weights=[1, w]`` is a *token-mean* SFT term,
equal to the official cumulative RPO only when w = η·β·(mean chosen length).
"""

from typing import Literal

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import RPOWeights, UnifiedEstimator


@preset("rpo")
def rpo(
    beta: float = 0.01, eta: float = 0.005, sft_normalization: Literal["sum", "seq_mean"] = "sum"
) -> UnifiedEstimator:
    """Official cumulative RPO: DPO + ηβ·mean_pairs(−l(y_w)); η = 0.005, β = 0.01 (Zephyr)."""
    return pairwise(RPOWeights(beta=beta, eta=eta, sft_normalization=sft_normalization), "rpo")


@preset("rpo_avg")
def rpo_avg(beta: float = 0.5, eta: float = 0.2) -> UnifiedEstimator:
    """RPO average variant (OpenRLHF script): DPO + η·mean_pairs(−l(y_w)/|y_w|); η=0.2, β=0.5."""
    return rpo(beta=beta, eta=eta, sft_normalization="seq_mean")
