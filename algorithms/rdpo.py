"""R-DPO, length-regularized DPO (Park et al. 2024, "Disentangling Length from Quality in Direct
Preference Optimization", arXiv 2403.19159): DPO tends to lengthen answers far past the data's;
charging α per token in the RLHF objective makes the policy's implicit reward
β log π/π_ref + α|y|, so the Bradley–Terry loss becomes

    −log σ(β(u_w − u_l) + α(|y_w| − |y_l|)),   u = log π − log π_ref (summed).

A pair whose chosen answer is longer already counts as partly won, so length alone earns less.
The paper tunes α per task: set it (0.05 here is a starting point, not the paper's value)."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import DPOWeights, UnifiedEstimator


@preset("rdpo")
def rdpo(beta: float = 0.1, alpha: float = 0.05) -> UnifiedEstimator:
    """β = 0.1, α = 0.05 per token (tune it)."""
    return pairwise(DPOWeights(beta, length_penalty=alpha), "rdpo")
