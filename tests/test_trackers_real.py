"""The real tracker packages in their offline / local modes (opt-in, `pytest -m slow`, skipped
where wandb, mlflow or trackio is not installed): a run logs to all three, and a resume
continues the same wandb and MLflow runs (ids kept in RUN/trackers.json) and the trackio run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_trainer import config_file, datasets

from alignlib.config import load_config
from alignlib.trainer.loop import Trainer

pytestmark = pytest.mark.slow


def test_wandb_mlflow_trackio_continue_their_runs_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for package in ("wandb", "mlflow", "trackio"):
        pytest.importorskip(package)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    (tmp_path / "wandb").mkdir()
    trackers = {"report_to": ["wandb", "mlflow", "trackio"], "project": "alignlib-test"}
    extra = {"train": {"max_steps": 4, "batch_size": 2}, "checkpoint": {"every": 2}}
    cfg = config_file(tmp_path, datasets(tmp_path)["preference"], "dpo", **extra, logging=trackers)
    first = Trainer(load_config(cfg)).train()
    ids = json.loads((first.output_dir / "trackers.json").read_text())
    assert set(ids) == {"wandb", "mlflow"}
    resumed = Trainer(load_config(cfg, ["checkpoint.resume=true", "train.max_steps=6"])).train()
    assert json.loads((resumed.output_dir / "trackers.json").read_text()) == ids
    import mlflow

    steps = {
        m.step for m in mlflow.tracking.MlflowClient().get_metric_history(ids["mlflow"], "loss")
    }
    assert steps == {1, 2, 3, 4, 5, 6}
