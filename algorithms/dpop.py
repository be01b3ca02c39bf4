"""DPO-Positive, DPOP (Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation
with DPO-Positive", arXiv 2402.13228, eq. 3):

    −log σ(β(u_w − u_l − λ·max(0, log π_ref(y_w) − log π(y_w)))),   u = log π − log π_ref,

summed log-probs, mean over pairs. With pairs whose responses differ in a few tokens DPO can
raise the margin while lowering the chosen response's likelihood; the penalty, active only
while the chosen response is less likely than under π_ref, stops that."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import DPOPWeights, UnifiedEstimator


@preset("dpop")
def dpop(beta: float = 0.1, lam: float = 50.0) -> UnifiedEstimator:
    """β = 0.1 (DPO's), λ = 50."""
    return pairwise(DPOPWeights(beta, lam), "dpop")
