"""format_reward and length_penalty."""

from __future__ import annotations

import pytest

from alignlib.rewards import format_reward, length_penalty


@pytest.mark.parametrize(
    ("completion", "require_end", "expected"),
    [
        ("Thus \\boxed{4}.", False, 1.0),
        ("Thus \\boxed{4}.", True, 1.0),
        ("Thus $\\boxed{4}$<|im_end|>", True, 1.0),
        ("\\boxed{4} but let me double-check everything again", False, 1.0),
        ("\\boxed{4} but let me double-check everything again", True, 0.0),
        ("no box at all", False, 0.0),
        ("an empty \\boxed{}", False, 0.0),
        ("a truncated \\boxed{4", False, 0.0),
        ("\\fbox{x+1}", True, 1.0),
    ],
)
def test_format_reward(completion: str, require_end: bool, expected: float) -> None:
    assert format_reward(completion, require_end=require_end, answer="4") == expected


def test_length_penalty_is_zero_then_linear_then_capped() -> None:
    assert length_penalty("x" * 100, target_length=100) == 0.0
    assert length_penalty("x" * 150, target_length=100) == pytest.approx(-0.5)
    assert length_penalty("x" * 200, target_length=100) == pytest.approx(-1.0)
    assert length_penalty("x" * 10_000, target_length=100) == -1.0  # capped at max_penalty
    assert length_penalty("x" * 110, target_length=100, slope=0.01) == pytest.approx(-0.1)
    assert length_penalty("x" * 300, target_length=100, max_penalty=0.25) == -0.25


def test_length_penalty_prefers_token_count() -> None:
    # A short string with many tokens is penalised by its token count.
    assert length_penalty("short", target_length=10, num_tokens=20) == pytest.approx(-1.0)
    assert length_penalty("x" * 50, target_length=10, num_tokens=5) == 0.0


def test_length_penalty_bad_arguments() -> None:
    with pytest.raises(ValueError, match="target_length must be > 0"):
        length_penalty("x", target_length=0)
