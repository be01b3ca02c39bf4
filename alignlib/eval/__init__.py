"""Math benchmark evaluation: generation through alignlib.rollout, grading through
alignlib.rewards."""

# alignlib.config.schema imports EvalConfig from this package. Loading the config package first
# makes `import alignlib.eval.config` work whichever side is imported first (otherwise importing
# eval.config first re-enters it half-initialised through schema and fails).
import alignlib.config  # noqa: F401
