"""Experiment trackers (`logging.report_to`): TensorBoard, wandb, trackio and MLflow, each
through its own library, imported only when listed.

metrics.jsonl stays the run's record (it is what a resume truncates and what the dashboard
plots); a tracker mirrors it. A resumed run continues the same tracker run: wandb's and MLflow's
run ids are kept in RUN/trackers.json (a fresh run writes new ones), trackio resumes by run name,
and TensorBoard purges the events past the checkpoint's step.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Protocol

IDS_FILE = "trackers.json"
PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "trackio": "trackio",
    "mlflow": "mlflow",
}
"""Tracker name → the module it imports (and the pip package that provides it)."""


class TrackerError(ValueError):
    """A tracker that cannot start (its package missing): one line with the pip command."""


def installed(module: str) -> bool:
    """Importable without importing it (a module already in sys.modules counts as it is)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_message(name: str) -> str:
    return f"{name} is not installed: pip install {PACKAGES[name]}"


def _import(name: str) -> Any:
    try:
        return importlib.import_module(PACKAGES[name])
    except ImportError:
        raise TrackerError(f"logging.report_to: {missing_message(name)}") from None


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_table(self, step: int, name: str, rows: list[dict[str, Any]]) -> None:
        """``rows`` (one dict per row, the same keys) as the step's table ``name``."""

    def close(self) -> None: ...


class RunIds:
    """RUN/trackers.json: the tracker run ids a resume continues (a fresh run forgets them)."""

    def __init__(self, output_dir: Path, resuming: bool) -> None:
        self.path = output_dir / IDS_FILE
        self.ids: dict[str, str] = {}
        if resuming and self.path.is_file():
            try:
                self.ids = dict(json.loads(self.path.read_text(encoding="utf-8")))
            except (ValueError, TypeError):
                self.ids = {}

    def get(self, name: str) -> str | None:
        return self.ids.get(name)

    def set(self, name: str, run_id: str) -> None:
        self.ids[name] = run_id
        self.path.write_text(json.dumps(self.ids, indent=2) + "\n", encoding="utf-8")


class TensorBoard:
    def __init__(self, output_dir: Path, start_step: int) -> None:
        _import("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events an interrupted run wrote past the checkpoint are dropped.
        purge = start_step + 1 if start_step > 0 else None
        self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_table(self, step: int, name: str, rows: list[dict[str, Any]]) -> None:
        self.writer.add_text(name, markdown_table(rows), step)

    def close(self) -> None:
        self.writer.close()


class Wandb:
    """`WANDB_MODE=offline` logs to RUN/wandb without a login (`wandb sync` uploads later)."""

    def __init__(self, output_dir: Path, project: str, name: str, config: Any, ids: RunIds):
        self.wandb = wandb = _import("wandb")
        run_id = ids.get("wandb")
        self.run = wandb.init(
            project=project,
            name=name,
            config=config,
            dir=str(output_dir),
            id=run_id,
            resume="allow" if run_id else None,
        )
        ids.set("wandb", str(self.run.id))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_table(self, step: int, name: str, rows: list[dict[str, Any]]) -> None:
        columns = list(rows[0])
        table = self.wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
        self.run.log({name: table}, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackio:
    """Local-first (a SQLite file under ~/.cache/huggingface/trackio; `trackio show`)."""

    def __init__(self, project: str, name: str, config: Any, resuming: bool) -> None:
        self.trackio = _import("trackio")
        self.trackio.init(
            project=project, name=name, config=config, resume="allow" if resuming else "never"
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.trackio.log(metrics, step=step)

    def log_table(self, step: int, name: str, rows: list[dict[str, Any]]) -> None:
        import pandas  # trackio's Table takes a DataFrame (as TRL hands it one)

        self.trackio.log({name: self.trackio.Table(dataframe=pandas.DataFrame(rows))}, step=step)

    def close(self) -> None:
        self.trackio.finish()


class MLflow:
    """Logs where MLFLOW_TRACKING_URI points (mlflow's default: a local store in the working
    directory); the config is stored as the run's config.json artifact."""

    def __init__(self, project: str, name: str, config: Any, ids: RunIds) -> None:
        self.mlflow = _import("mlflow")
        self.mlflow.set_experiment(project)
        run_id = ids.get("mlflow")
        run = (
            self.mlflow.start_run(run_id=run_id) if run_id else self.mlflow.start_run(run_name=name)
        )
        ids.set("mlflow", str(run.info.run_id))
        if not run_id and config is not None:
            self.mlflow.log_dict(config, "config.json")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def log_table(self, step: int, name: str, rows: list[dict[str, Any]]) -> None:
        columns = {c: [r.get(c) for r in rows] for c in rows[0]}
        self.mlflow.log_table(data=columns, artifact_file=f"{name}/step_{step:06d}.json")

    def close(self) -> None:
        self.mlflow.end_run()


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """``rows`` as a Markdown table (TensorBoard's text tab renders it): cells on one line."""

    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return "<br>".join(text.replace("|", "\\|").splitlines())  # every kind of line break

    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def open_trackers(
    names: list[str],
    output_dir: Path,
    *,
    project: str,
    run_name: str,
    run_config: dict[str, Any] | None,
    start_step: int,
) -> list[Tracker]:
    """The listed trackers, started (a resume, ``start_step > 0``, continues their runs)."""
    ids = RunIds(output_dir, resuming=start_step > 0)
    trackers: list[Tracker] = []
    for name in names:
        if name == "tensorboard":
            trackers.append(TensorBoard(output_dir, start_step))
        elif name == "wandb":
            trackers.append(Wandb(output_dir, project, run_name, run_config, ids))
        elif name == "trackio":
            trackers.append(Trackio(project, run_name, run_config, start_step > 0))
        elif name == "mlflow":
            trackers.append(MLflow(project, run_name, run_config, ids))
        else:
            raise TrackerError(f"logging.report_to: unknown tracker {name!r}")
    return trackers
