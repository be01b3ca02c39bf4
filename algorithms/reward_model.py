"""A Bradley-Terry reward model (Ouyang et al. 2022; TRL's ``RewardTrainer``, OpenRLHF's
``train_rm``): the policy's decoder under a one-output head scores r(x, y), trained on
preference pairs with −log σ(r_w − r_l − m), plus c·mean((r_w + r_l)²) when ``center_coef`` is
set; m is ``margin`` plus, when the rows have one, the pair's `margin` column (TRL's
RewardTrainer reads that column the same way). As a UPGE composition it is the reference-free
pairwise logistic term (CPO's / SimPO's weights, β = 1) on the ``score`` likelihood, whose unit
value is r instead of log π: the weights σ(−z) times ∇r_w − ∇r_l are exactly the Bradley-Terry
gradient. The trained model (final/; merged/ with LoRA and ``save_merged``) is an
``AutoModelForSequenceClassification``: the preference oracle of iterations
(``iterative.oracle: reward_model:PATH``), or a reward function through
``alignlib.rewards.RewardModelScorer``."""

from alignlib.algorithms.registry import pairwise, preset
from alignlib.estimator import ScoreCentering, TPOLWeights, UnifiedEstimator


@preset("reward_model")
def reward_model(margin: float = 0.0, center_coef: float | None = None) -> UnifiedEstimator:
    """TRL's defaults: no margin, no centring (its suggested ``center_rewards_coefficient``
    is 0.01); ``margin`` is a constant added to every pair's own `margin` column (data rows
    {prompt, chosen, rejected, margin}; 0 without the column)."""
    weights = TPOLWeights(beta=1.0, gamma=margin, row_margins=True)
    estimator = pairwise(weights, "reward_model", likelihood="score")
    if center_coef is None:
        return estimator
    return estimator + UnifiedEstimator.from_terms(ScoreCentering(coef=center_coef))
