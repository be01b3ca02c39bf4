"""Verifiable rewards: plain callables that import nothing of training or rollout."""
