"""Rewards for the online-RL tests, referenced as `online_rewards:NAME` (module:function)."""

from __future__ import annotations


def digit_share(completion: str, **_: object) -> float:
    """Share of the completion's characters that are digits: dense, so a tiny random model gets
    some signal in every group, and learnable by raising the probability of digit tokens."""
    text = completion.strip()
    return sum(c.isdigit() for c in text) / max(1, len(text))


def has_digit(completion: str, **_: object) -> float:
    """1.0 if the completion contains a digit (a 0/1 'correctness' for gate tests)."""
    return float(any(c.isdigit() for c in completion))


def constant_or_digit(completion: str, mode: str = "vary", **_: object) -> float:
    """Rows with mode 'const' always score 1.0 (an all-equal group); others score has_digit."""
    return 1.0 if mode == "const" else has_digit(completion)


def one(completion: str, **_: object) -> float:
    """1.0 for every completion: every state's value is known (a critic's fixed point)."""
    return 1.0


def matches_target(completion: str, target: str, **_: object) -> float:
    """1.0 when the completion holds the row's `target` column (a reward that reads a column
    held-out rows may lack)."""
    return float(target in completion)
