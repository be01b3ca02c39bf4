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


def load_example(script: str):
    """Import ``examples/<script>`` as a module (its helpers, without running main)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(script).stem, EXAMPLES / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entropy_law_fit_recovers_a_known_curve() -> None:
    """R = −a·e^H + b fitted by least squares: exact points give a, b and R² = 1; added noise
    that is orthogonal to [e^H, 1] leaves a, b unchanged and lowers R² to the closed form."""
    fit_entropy_law = load_example("entropy_mechanism.py").fit_entropy_law
    import numpy as np

    h = np.linspace(0.1, 1.6, 12)
    exact = -0.37 * np.exp(h) + 1.9
    fit = fit_entropy_law(list(h), list(exact))
    assert fit["a"] == pytest.approx(0.37, abs=1e-9) and fit["b"] == pytest.approx(1.9, abs=1e-9)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12)
    design = np.stack([np.exp(h), np.ones_like(h)], axis=1)
    noise = np.random.default_rng(0).normal(size=h.size)
    noise -= design @ np.linalg.lstsq(design, noise, rcond=None)[0]  # ⟂ the fitted columns
    noisy = exact + 0.1 * noise
    fit = fit_entropy_law(list(h), list(noisy))
    assert fit["a"] == pytest.approx(0.37, abs=1e-9) and fit["b"] == pytest.approx(1.9, abs=1e-9)
    total = np.sum((noisy - noisy.mean()) ** 2)
    assert fit["r2"] == pytest.approx(1 - np.sum((0.1 * noise) ** 2) / total, rel=1e-9)
    assert fit_entropy_law([0.5, 1.0], [0.2, 0.2])["r2"] is None  # constant R: undefined


def test_process_vs_outcome_quick(tmp_path: Path) -> None:
    results = run_quick("process_vs_outcome.py", tmp_path)
    assert (tmp_path / "process_vs_outcome.png").stat().st_size > 10_000
    runs = results["per_step"]["0"]
    assert set(runs) == set(results["summary"]) == {"outcome (grpo)", "process (grpo_process)"}
    curves = [run["turn_reward"] for run in runs.values()]
    assert all(len(c) == results["setting"]["steps"] for c in curves)
    assert curves[0][0] == curves[1][0]  # the same initial model and first rollouts
    assert all(0.0 <= r <= 3.0 for c in curves for r in c)


def test_entropy_mechanism_quick(tmp_path: Path) -> None:
    results = run_quick("entropy_mechanism.py", tmp_path)
    for png in ("entropy_reward.png", "entropy_fit.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    steps = results["setting"]["scale"]["steps"]
    assert set(results["methods"]) == {"grpo", "clip_cov", "kl_cov"}
    for run in results["methods"].values():
        for key in ("entropy", "reward"):
            assert run[key]["step"] == list(range(1, steps + 1))
        assert all(h > 0 for h in run["entropy"]["value"])  # nats on a real distribution
        assert run["final_entropy"] == run["entropy"]["value"][-1]
        assert run["final_reward"] == run["reward"]["value"][-1]
    assert set(results["fit"]) == {"a", "b", "r2", "points"}
    assert results["fit"]["points"] == steps
    first = results["fit_from_first_reward"]
    assert first["points"] == steps - first["first_step"] + 1
    assert results["claim_holds"] == (
        all(results["entropy_higher_than_grpo"].values())
        and all(results["reward_at_least_grpo"].values())
    )


def test_hpt_vs_baselines_quick(tmp_path: Path) -> None:
    results = run_quick("hpt_vs_baselines.py", tmp_path)
    for png in ("heldout_accuracy.png", "hpt_gate.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    steps = results["setting"]["scale"]["steps"]
    methods = results["methods"]
    assert set(methods) == {"hpt", "sft", "grpo", "sft_then_grpo"}
    for run in methods.values():  # every run evaluated before training and at the same last step
        assert run["heldout_accuracy"]["step"][0] == 0
        assert run["heldout_accuracy"]["step"][-1] == steps
    joined = methods["sft_then_grpo"]["heldout_accuracy"]["step"]
    assert joined == sorted(set(joined))  # the GRPO phase continues the step count, no repeats
    assert methods["sft"]["sft_frac"]["value"] == [1.0] * steps  # the gate is shut
    assert methods["grpo"]["sft_frac"]["value"] == []  # GRPO has no gate
    hpt = methods["hpt"]  # γ = 0: every prompt goes to SFT exactly when no rollout is correct
    for acc, frac in zip(hpt["rollout_accuracy"]["value"], hpt["sft_frac"]["value"], strict=True):
        assert (frac == 1.0) == (acc == 0.0)
    assert results["claim_holds"] == (
        results["final_heldout_accuracy"]["hpt"]
        >= max(v for k, v in results["final_heldout_accuracy"].items() if k != "hpt")
    )


def test_topr_off_policy_quick(tmp_path: Path) -> None:
    results = run_quick("topr_off_policy.py", tmp_path)
    assert (tmp_path / "topr_off_policy.png").stat().st_size > 10_000
    scale = results["setting"]["scale"]
    run = results["runs"]["0"]
    assert set(run["curves"]) == {"reinforce", "topr", "positives_only"}
    for curve in run["curves"].values():  # measured before training and after the last epoch
        assert curve["epoch"][0] == 0 and curve["epoch"][-1] == scale["epochs"]
    starts = {name: c["wrong_logp"][0] for name, c in run["curves"].items()}
    assert len(set(starts.values())) == 1  # every method starts from μ's weights
    assert set(results["claims"]) == {
        "reinforce_unbounded",
        "reinforce_degrades",
        "topr_bounded",
        "topr_keeps_accuracy",
    }
    assert results["claim_holds"] == all(results["claims"].values())


def test_otb_variance_quick(tmp_path: Path) -> None:
    results = run_quick("otb_variance.py", tmp_path)
    assert (tmp_path / "otb_variance.png").stat().st_size > 10_000
    run = results["runs"]["0"]
    for name in ("none", "group_mean", "otb"):
        assert set(run[name]) == {
            "variance",
            "mean_norm",
            "distance_from_none",
            "variance_rel_none",
        }
    assert run["none"]["distance_from_none"] == 0.0
    lower = run["otb"]["variance"] < run["group_mean"]["variance"]
    assert results["claim_holds"] == lower


def test_m2po_stale_quick(tmp_path: Path) -> None:
    results = run_quick("m2po_stale.py", tmp_path)
    assert (tmp_path / "m2po_stale.png").stat().st_size > 10_000
    scale = results["setting"]["scale"]
    run = results["runs"]["0"]
    assert set(run) == {"on_policy", "grpo", "no_trust_region", "m2po", "m2po_released"}
    for name, curve in run.items():  # evaluated before training and after the last update
        assert curve["update"][0] == 0 and curve["update"][-1] == scale["updates"]
        assert len(curve["reward"]) == len(curve["masked"]) == scale["updates"]
        assert all(0 <= share <= 1 for share in curve["masked"])
        if name in ("on_policy", "no_trust_region"):  # nothing to clip or mask
            assert curve["masked"] == [0.0] * scale["updates"]
    starts = {c["accuracy"][0] for c in run.values()}
    assert len(starts) == 1  # every method starts from μ's weights
    assert results["claim_holds"] == all(results["claims"].values())


def test_minimal_rl_quick(tmp_path: Path) -> None:
    results = run_quick("minimal_rl.py", tmp_path)
    assert (tmp_path / "minimal_rl.png").stat().st_size > 10_000
    scale = results["setting"]["scale"]
    run = results["runs"]["0"]
    assert set(run) == {"grpo", "reinforce", "reinforce_rej", "raft_pp"}
    for curve in run.values():  # evaluated before training and after the last update
        assert curve["update"][0] == 0 and curve["update"][-1] == scale["updates"]
        for key in ("reward", "entropy", "kl", "all_wrong"):
            assert len(curve[key]) == scale["updates"]
        assert curve["kl"][0] == 0.0  # the first batch is sampled by μ itself
        assert all(0 <= share <= 1 for share in curve["reward"] + curve["all_wrong"])
    starts = {c["accuracy"][0] for c in run.values()}
    assert len(starts) == 1  # every method starts from μ's weights
    assert results["claim_holds"] == all(results["claims"].values())
