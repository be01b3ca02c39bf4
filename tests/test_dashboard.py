"""training_curves.png leads with what a user of the method watches; constants get no panel."""

from __future__ import annotations

import json
from pathlib import Path

from alignlib.trainer.dashboard import dashboard_panels
from alignlib.trainer.logs import plot_run


def dpo_records() -> list[dict]:
    return [
        {
            "step": s,
            "tokens_per_s": 1000.0 + s,
            "skipped_steps": 0.0,
            "epoch": 0,
            "lr": 1e-4 / s,
            "grad_norm": 0.3 * s,
            "dpo/rejected_logp": -50.0 - s,
            "dpo/chosen_logp": -50.0 + s,
            "dpo/margin": 0.1 * s,
            "dpo/accuracy": 0.5 + 0.1 * s,
            "dpo/loss": 0.7 - 0.01 * s,
            "loss": 0.7 - 0.01 * s,
            "time/step_s": 1.0,
        }
        for s in range(1, 5)
    ]


def online_records() -> list[dict]:
    first = {"step": 0, "heldout/accuracy": 0.0, "heldout/response_length": 30.0}
    return [first] + [
        {
            "step": s,
            "lr": 3e-4,
            "epoch": 0.0,
            "skipped_steps": 0.0,
            "grad_norm": 3.0 / s,
            "rollout/response_length": 20.0 - s,
            "rollout/reward_mean": 0.2 * s,
            "rollout/reward_std": 0.1,
            "rollout/accuracy": 0.25 * s,
            "entropy/mean": 2.0 / s,
            "hpt/sft_frac": 1.0 - 0.2 * s,
            "pg/cov_mean": 0.01 * s,
            "loss": 1.0 / s,
            "heldout/accuracy": 0.2 * s,
            "time/rollout_s": 3.0 + s,
        }
        for s in range(1, 5)
    ]


def test_dpo_panels_lead_with_accuracy_loss_margin_and_likelihoods() -> None:
    panels, constant = dashboard_panels(dpo_records())
    assert [p.keys for p in panels] == [
        ["dpo/accuracy"],
        ["loss"],  # dpo/loss is the same series: drawn once
        ["dpo/margin"],
        ["dpo/chosen_logp", "dpo/rejected_logp"],
        ["grad_norm"],
        ["lr"],  # varies here (a schedule): plotted, after what the method watches
        ["tokens_per_s"],
    ]
    assert constant == {"epoch": 0.0, "skipped_steps": 0.0}
    assert panels[3].title == "Log-likelihood: chosen vs rejected · dpo"


def test_online_panels_lead_with_heldout_reward_loss_signal_entropy_length() -> None:
    panels, constant = dashboard_panels(online_records())
    assert [p.keys[0] for p in panels] == [
        "heldout/accuracy",
        "rollout/reward_mean",
        "rollout/accuracy",
        "loss",
        "hpt/sft_frac",
        "pg/cov_mean",
        "entropy/mean",
        "heldout/response_length",
        "rollout/response_length",
        "grad_norm",
    ]
    assert set(constant) == {"lr", "epoch", "skipped_steps", "rollout/reward_std"}
    assert not any(p.keys[0].startswith("time/") for p in panels)


def test_held_out_pass_at_k_is_one_panel_after_the_greedy_accuracy() -> None:
    records = [
        {"step": s, "heldout/accuracy": 0.1 * s, "loss": 1.0 / s}
        | {f"heldout/pass@{k}": min(1.0, 0.05 * s * k) for k in (16, 1, 4, 2)}
        for s in range(1, 5)
    ]
    panels, _ = dashboard_panels(records)
    assert [p.keys for p in panels[:2]] == [
        ["heldout/accuracy"],
        ["heldout/pass@1", "heldout/pass@2", "heldout/pass@4", "heldout/pass@16"],
    ]
    assert panels[1].title == "Held-out pass@k (sampled)"


def test_a_critic_s_value_loss_and_explained_variance_follow_the_method_s_signal() -> None:
    records = [
        {
            "step": s,
            "loss": 1.0 / s,
            "ppo/clipfrac": 0.01 * s,
            "critic/value_loss": 0.5 / s,
            "critic/explained_variance": -1.0 + 0.2 * s,
            "critic/values": 0.3 * s,
            "rollout/reward_mean": 0.1 * s,
            "entropy/mean": 2.0 / s,
        }
        for s in range(1, 5)
    ]
    order = [p.keys[0] for p in dashboard_panels(records)[0]]
    assert order[:4] == ["rollout/reward_mean", "loss", "ppo/clipfrac", "critic/value_loss"]
    assert order[4:] == ["critic/explained_variance", "entropy/mean", "critic/values"]


def test_plot_run_writes_the_png(tmp_path: Path) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in online_records())
    (tmp_path / "metrics.jsonl").write_text(lines)
    target = plot_run(tmp_path)
    assert target == tmp_path / "training_curves.png"
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _cli_plot(run: Path, capsys) -> tuple[int, str, str]:
    from alignlib.cli import main

    code = main(["plot", str(run)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plot_of_an_empty_or_cut_metrics_file_is_one_line(tmp_path: Path, capsys) -> None:
    metrics = tmp_path / "metrics.jsonl"
    for text in ("", "\n\n", '{"step": 1, "lo'):  # empty, blank, only a line cut short
        metrics.write_text(text)
        code, out, err = _cli_plot(tmp_path, capsys)
        assert code == 2 and out == ""
        assert err.strip() == f"alignlib: error: {metrics} has no complete rows; nothing to plot"
        assert not (tmp_path / "training_curves.png").exists()


def test_plot_keeps_the_rows_before_a_cut_last_line(tmp_path: Path, capsys) -> None:
    rows = "".join(json.dumps(r) + "\n" for r in dpo_records())
    (tmp_path / "metrics.jsonl").write_text(rows + '{"step": 5, "loss": 0.6')
    code, out, err = _cli_plot(tmp_path, capsys)
    assert code == 0 and out.strip() == str(tmp_path / "training_curves.png")
    assert "line 5 is cut short" in err and "plotting the rows before it (4)" in err
    assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_names_a_bad_line_before_the_last(tmp_path: Path, capsys) -> None:
    good = json.dumps({"step": 1, "loss": 1.0})
    for bad in ("not json", '{"loss": 2.0}'):
        (tmp_path / "metrics.jsonl").write_text(f"{good}\n{bad}\n{good}\n")
        code, _, err = _cli_plot(tmp_path, capsys)
        assert code == 2 and "metrics.jsonl line 2: expected a JSON object with a numeric" in err
        assert "fix or delete that line" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "metrics.jsonl").write_text(f"{json.dumps({'step': 1, 'note': 'x'})}\n")
    code, _, err = _cli_plot(tmp_path, capsys)
    assert code == 2 and "has rows but no numeric metrics; nothing to plot" in err


def test_plot_at_the_end_of_training_warns_when_there_is_nothing_to_plot(
    tmp_path: Path, capsys
) -> None:
    (tmp_path / "metrics.jsonl").write_text("")
    assert plot_run(tmp_path) is None
    assert "warning: no training curves:" in capsys.readouterr().err
    assert not (tmp_path / "training_curves.png").exists()
