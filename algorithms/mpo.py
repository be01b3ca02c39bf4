"""MPO (Wang et al. 2024, "Enhancing the Reasoning Ability of Multimodal Large Language Models
via Mixed Preference Optimization", arXiv 2411.10442): on each preference pair, a weighted sum
of a preference loss (DPO's sigmoid: which response is better), a quality loss (BCO's binary
classifier: how good each response is on its own) and a generation loss (SFT on the chosen
response: how to write it). TRL's recipe: ``loss_type=["sigmoid", "bco_pair", "sft"]`` with
``loss_weights=[0.8, 0.2, 1.0]``; its SFT term is the token mean over the chosen rows.
"""

from alignlib.algorithms.bco_pair import bco_pair
from alignlib.algorithms.dpo import dpo
from alignlib.algorithms.registry import preset
from alignlib.algorithms.sft import sft
from alignlib.estimator import UnifiedEstimator


@preset("mpo")
def mpo(
    beta: float = 0.1,
    preference_weight: float = 0.8,
    quality_weight: float = 0.2,
    generation_weight: float = 1.0,
) -> UnifiedEstimator:
    """w_p·L_DPO + w_q·L_BCO + w_g·L_SFT(chosen) with TRL's MPO weights (0.8, 0.2, 1.0) and
    β = 0.1 for both pairwise losses."""
    return (
        preference_weight * dpo(beta)
        + quality_weight * bco_pair(beta)
        + generation_weight * sft(rows="chosen")
    )
