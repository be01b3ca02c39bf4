"""Math benchmark evaluation: generation through alignlib.rollout, grading through
alignlib.rewards."""
