"""The unified policy-gradient estimator (UPGE)."""
