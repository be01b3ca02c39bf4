"""The unified policy-gradient estimator (UPGE): gradient = mask · (1/π_ref) · Â · ∇π.

Pure tensor math: this package imports torch only. One registry per component kind:
``MASKS``, ``REFERENCES``, ``ADVANTAGES``, ``LIKELIHOODS``, ``AGGREGATIONS``, ``REGULARIZERS``.
A :class:`RolloutCorrection` (trainer/engine mismatch) attaches to any estimator with
``estimator.with_rollout_correction(...)``.
"""

from alignlib.estimator.advantages import (
    ADVANTAGES,
    Advantage,
    AdvantageResult,
    BatchNormalized,
    ConstantAdvantage,
    FixedBaseline,
    GivenAdvantage,
    GreedyBaseline,
    GroupNormalized,
    LeaveOneOut,
)
from alignlib.estimator.aggregation import (
    AGGREGATIONS,
    Aggregation,
    PairMean,
    SeqMeanTokenMean,
    SeqMeanTokenSum,
    SeqMeanTokenSumNorm,
    TokenMean,
)
from alignlib.estimator.batch import ALL_ROWS, Batch, BatchError, Role, Rows
from alignlib.estimator.core import EstimatorInputError, EstimatorOutput, UnifiedEstimator
from alignlib.estimator.cov_masks import ClipCov, KLCov, token_covariance
from alignlib.estimator.critic import GAE, ValueLoss
from alignlib.estimator.distillation import TeacherLogRatio
from alignlib.estimator.dpo_losses import (
    AOTWeights,
    APODownWeights,
    APOZeroWeights,
    BCOPairWeights,
    DiscoPOPWeights,
    DPOPWeights,
    EXOPairWeights,
    NCAPairWeights,
    RobustDPOWeights,
    SPPOHardWeights,
)
from alignlib.estimator.entropy_masks import HighEntropyTokens
from alignlib.estimator.gigpo import AnchorStateAdvantage
from alignlib.estimator.group_baselines import (
    CorrectedGroupMean,
    LengthWeightedBaseline,
    MixedGroupReward,
    PositiveReward,
)
from alignlib.estimator.kto import KTOWeights
from alignlib.estimator.m2po import M2POClip, M2POMask
from alignlib.estimator.masks import (
    MASKS,
    CompletionMask,
    DifficultyBand,
    GroupFilter,
    Mask,
    PerRoleMask,
    PPOClip,
    RewardFilter,
    RowFilter,
)
from alignlib.estimator.max_at_k import MaxAtK, PassAtKTraining
from alignlib.estimator.multi_reward import DecoupledGroupNormalized
from alignlib.estimator.off_policy_masks import OffPolicySequenceMask, SecondMomentMask
from alignlib.estimator.preferences import (
    DPOWeights,
    HingeWeights,
    INPOWeights,
    IPOWeights,
    PairwiseAdvantage,
    RPOWeights,
)
from alignlib.estimator.process import ProcessGroupNormalized
from alignlib.estimator.ratio_weights import (
    ClippedISWeight,
    GammaWeight,
    GeometricMeanClip,
    SoftGate,
    TaperedISWeight,
)
from alignlib.estimator.reference_free import ORPOWeights, TPOLWeights, TPOWeights
from alignlib.estimator.references import (
    REFERENCES,
    ConstantReference,
    CurrentPolicy,
    OldPolicy,
    PerRole,
    Reference,
    ShapedReference,
)
from alignlib.estimator.registry import Registry, RegistryError
from alignlib.estimator.regularizers import (
    NLL,
    REGULARIZERS,
    AdaptiveEntropyBonus,
    EntropyBonus,
    KLPenalty,
    ScoreCentering,
)
from alignlib.estimator.rollout_correction import (
    RolloutCorrection,
    kept_log_mass,
    rollout_correction,
)
from alignlib.estimator.routing import AllRollouts, Router, RowPlan, plan_rows
from alignlib.estimator.term import PolicyGradientTerm, Term, TermOutput
from alignlib.estimator.token_baseline import OptimalTokenBaseline
from alignlib.estimator.trust_region import DivergenceTrustRegion
from alignlib.estimator.units import (
    LIKELIHOODS,
    LengthDesensitized,
    Likelihood,
    SequenceMean,
    SequenceMeanPerToken,
    SequenceScore,
    SequenceSum,
    TokenLikelihood,
)

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "ALL_ROWS",
    "GAE",
    "LIKELIHOODS",
    "MASKS",
    "NLL",
    "REFERENCES",
    "REGULARIZERS",
    "AOTWeights",
    "APODownWeights",
    "APOZeroWeights",
    "AdaptiveEntropyBonus",
    "Advantage",
    "AdvantageResult",
    "Aggregation",
    "AllRollouts",
    "AnchorStateAdvantage",
    "BCOPairWeights",
    "Batch",
    "BatchError",
    "BatchNormalized",
    "ClipCov",
    "ClippedISWeight",
    "CompletionMask",
    "ConstantAdvantage",
    "ConstantReference",
    "CorrectedGroupMean",
    "CurrentPolicy",
    "DPOPWeights",
    "DPOWeights",
    "DecoupledGroupNormalized",
    "DifficultyBand",
    "DiscoPOPWeights",
    "DivergenceTrustRegion",
    "EXOPairWeights",
    "EntropyBonus",
    "EstimatorInputError",
    "EstimatorOutput",
    "FixedBaseline",
    "GammaWeight",
    "GeometricMeanClip",
    "GivenAdvantage",
    "GreedyBaseline",
    "GroupFilter",
    "GroupNormalized",
    "HighEntropyTokens",
    "HingeWeights",
    "INPOWeights",
    "IPOWeights",
    "KLCov",
    "KLPenalty",
    "KTOWeights",
    "LeaveOneOut",
    "LengthDesensitized",
    "LengthWeightedBaseline",
    "Likelihood",
    "M2POClip",
    "M2POMask",
    "Mask",
    "MaxAtK",
    "MixedGroupReward",
    "NCAPairWeights",
    "ORPOWeights",
    "OffPolicySequenceMask",
    "OldPolicy",
    "OptimalTokenBaseline",
    "PPOClip",
    "PairMean",
    "PairwiseAdvantage",
    "PassAtKTraining",
    "PerRole",
    "PerRoleMask",
    "PolicyGradientTerm",
    "PositiveReward",
    "ProcessGroupNormalized",
    "RPOWeights",
    "Reference",
    "Registry",
    "RegistryError",
    "RewardFilter",
    "RobustDPOWeights",
    "Role",
    "RolloutCorrection",
    "Router",
    "RowFilter",
    "RowPlan",
    "Rows",
    "SPPOHardWeights",
    "ScoreCentering",
    "SecondMomentMask",
    "SeqMeanTokenMean",
    "SeqMeanTokenSum",
    "SeqMeanTokenSumNorm",
    "SequenceMean",
    "SequenceMeanPerToken",
    "SequenceScore",
    "SequenceSum",
    "ShapedReference",
    "SoftGate",
    "TPOLWeights",
    "TPOWeights",
    "TaperedISWeight",
    "TeacherLogRatio",
    "Term",
    "TermOutput",
    "TokenLikelihood",
    "TokenMean",
    "UnifiedEstimator",
    "ValueLoss",
    "kept_log_mass",
    "plan_rows",
    "rollout_correction",
    "token_covariance",
]
