"""The `algorithm:` options any online method takes (high_entropy, off_policy_mask,
adaptive_entropy) refuse a bad value, an unknown parameter or a method they cannot apply to in
one line naming the key, before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignlib.config import load_config

CASES = {
    "{name: dpo, high_entropy: {}}": ("high_entropy", "trains on sampled rows"),
    "{name: grpo, high_entropy: {ratio: 0}}": ("high_entropy", "ratio must be > 0"),
    "{name: grpo, high_entropy: {rato: 0.2}}": ("high_entropy", "did you mean 'ratio'"),
    "{name: grpo, high_entropy: {scope: per_microbatch}}": (
        "high_entropy",
        "needs denominator 'all'",
    ),
    "{name: dpo, off_policy_mask: {}}": ("off_policy_mask", "trains on sampled rows"),
    "{name: grpo, off_policy_mask: {delta: -1}}": ("off_policy_mask", "delta must be >= 0"),
    "{name: grpo, off_policy_mask: {threshold: 1}}": ("off_policy_mask", "valid: delta"),
    "{name: grpo, adaptive_entropy: {target: -1}}": ("adaptive_entropy", "target must be >= 0"),
    "{name: grpo, adaptive_entropy: {coef: 2}}": ("adaptive_entropy", "coef must be <= 1"),
    "{name: grpo, adaptive_entropy: {targt: 1}}": ("adaptive_entropy", "did you mean 'target'"),
}


@pytest.mark.parametrize("algorithm", list(CASES))
def test_misuse_is_one_line_naming_the_key(tmp_path: Path, algorithm: str) -> None:
    key, message = CASES[algorithm]
    path = tmp_path / "run.yaml"
    path.write_text(Path("configs/grpo.yaml").read_text() + f"\nalgorithm: {algorithm}\n")
    with pytest.raises(ValueError, match=f"algorithm.{key}: .*{message}") as info:
        load_config(path)
    assert "\n" not in str(info.value)
