"""SPPO (Wu et al. 2024, "Self-Play Preference Optimization") with hard win probabilities, as
TRL's ``sppo_hard``: squared distance of each log-ratio to ±1/(2β). The paper's iterative self-play
(π_t in place of π_ref each round) is INPO's loop; this preset keeps the reference fixed."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import SPPOHardWeights, UnifiedEstimator


@preset("sppo_hard")
def sppo_hard(beta: float = 1e-3) -> UnifiedEstimator:
    """β = 1/η = 1e-3, the authors' pipeline (scripts/pipeline.sh: BETA=0.001). TRL's default
    β is 0.1, which moves the target log-ratios ±1/(2β) from ±500 to ±5."""
    return pairwise(SPPOHardWeights(beta), "sppo_hard")
