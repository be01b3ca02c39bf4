"""The paper-reproduction examples run end to end with --quick (a plumbing check in seconds,
not the claim): each writes its results.json with the documented keys and its PNGs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.usefixtures("one_thread")


def run_quick(script: str, out: Path) -> dict:
    """Run ``examples/<script> --quick --out out`` as a user would; its results.json."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_rpo_vs_dpo_quick(tmp_path: Path) -> None:
    results = run_quick("rpo_vs_dpo.py", tmp_path)
    assert (tmp_path / "rpo_vs_dpo.png").stat().st_size > 10_000
    assert results["setting"]["quick"] is True
    for method in ("DPO", "RPO"):
        table = results["start_end"][method]
        assert set(table) == {"chosen_logp", "rejected_logp", "margin"}
        steps = results["per_step"]["0"][method]["chosen_logp"]
        assert len(steps) == results["setting"]["preference_steps"]
        assert table["chosen_logp"]["start_per_seed"] == [steps[0]]
        assert table["margin"]["start_per_seed"] == [0.0]  # θ = θ_ref at the first step


def test_bvpo_variance_quick(tmp_path: Path) -> None:
    results = run_quick("bvpo_variance.py", tmp_path)
    for png in ("bvpo_variance.png", "bvpo_alpha_online.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    seed = results["per_seed"]["0"]
    assert set(seed["variance"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    assert seed["variance_rel_trace_only"]["1.0"] == 1.0
    assert 0.0 <= seed["alpha_star"] <= 1.0
    assert len(seed["alpha_star_online"]) == results["setting"]["minibatches"]
    assert seed["alpha_star_online"][-1] == seed["alpha_star"]
    alphas = results["alpha_auto_run"]["0"]["alpha_per_step"]
    assert alphas[:2] == [0.5, 0.5] and all(0.0 <= a <= 1.0 for a in alphas)
