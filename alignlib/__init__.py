"""alignlib: post-training for LLMs as one unified policy-gradient estimator."""

__version__ = "0.1.0"
