"""TPO-L (Saeidi et al., v2): −log σ(β(l̄(y_w) − l̄(y_l)) − γ) + α·NLL(gold), length-averaged."""

from alignlib.algorithms.registry import preset
from alignlib.algorithms.simpo import simpo
from alignlib.estimator import NLL, Role, Rows, UnifiedEstimator


@preset("tpo_l")
def tpo_l(beta: float = 2.0, gamma: float = 0.5, alpha: float = 1.0) -> UnifiedEstimator:
    """TPO-L with target margin γ = 0.5: SimPO's margin term plus the gold response's NLL. β is
    model-specific in the paper's table (2 for Mistral-Base, 10 for Llama-3-Instruct); TRL's
    β = 0.01 makes the margin term nearly inert on length-averaged log-probs, so the default
    here is 2."""
    pairs = simpo(beta=beta, gamma=gamma).renamed("tpo_l")
    gold = NLL(coef=alpha, rows=Rows.of(Role.DEMO), normalization="token_mean_batch", name="gold")
    return UnifiedEstimator(terms=[*pairs.terms, gold])
