"""DPO (Rafailov et al. 2023): −log σ(βΔ), Δ = r(y_w) − r(y_l), r = log π/π_ref summed.

Three published generalizations are options: conservative DPO (cDPO, Mitchell 2023;
OpenRLHF's ``label_smoothing``), f-DPO (Wang et al. 2024; TRL's ``f_divergence_type``) and
R-DPO's length term (Park et al. 2024; also the ``rdpo`` preset).
"""

from typing import Literal

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import DPOWeights, UnifiedEstimator


@preset("dpo")
def dpo(
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    divergence: Literal["reverse_kl", "forward_kl", "js", "alpha"] = "reverse_kl",
    divergence_alpha: float = 0.5,
    length_penalty: float = 0.0,
) -> UnifiedEstimator:
    """Sigmoid DPO, mean over pairs. β = 0.1 (paper, TRL default). ``label_smoothing`` ε > 0
    is cDPO: −(1 − ε) log σ(βΔ) − ε log σ(−βΔ), for labels flipped with probability ε.
    ``divergence`` replaces the reverse KL by the forward KL, Jensen–Shannon or an α-divergence
    (``divergence_alpha``, the paper's α; TRL's ``f_alpha_divergence_coef`` = 1 − α).
    ``length_penalty`` α adds α(|y_w| − |y_l|) to the margin (R-DPO)."""
    weights = DPOWeights(beta, label_smoothing, divergence, divergence_alpha, length_penalty)
    return pairwise(weights, "dpo")
