"""Logs people use: a rich progress bar, metrics.jsonl always, the trackers of
`logging.report_to` (TensorBoard, wandb, trackio, MLflow; with `logging.completions`, each
step's samples as a table there too), and a dashboard PNG."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from alignlib.config.schema import LoggingConfig
from alignlib.console import warn
from alignlib.trainer.completions_log import FILE as COMPLETIONS
from alignlib.trainer.completions_log import CompletionFeed
from alignlib.trainer.trackers import Tracker, installed, open_trackers

METRICS_FILE = "metrics.jsonl"
PROGRESS_KEYS = (
    ("loss", "loss"),
    ("margin", "margin"),
    ("accuracy", "acc"),
    ("reward_mean", "reward"),
    ("tokens_per_s", "tok/s"),
)


def _short(metrics: dict[str, float]) -> str:
    parts = []
    for key, label in PROGRESS_KEYS:
        value = metrics.get(key)
        if value is None:
            value = next((v for k, v in metrics.items() if k.endswith("/" + key)), None)
        if value is not None:
            parts.append(
                f"{label} {value:.4g}" if key != "tokens_per_s" else f"{label} {value:.0f}"
            )
    return "  ".join(parts)


class RunLogger:
    """Writes one JSON line per step; mirrors it to the trackers of `logging.report_to` and
    the progress bar."""

    def __init__(
        self,
        output_dir: Path,
        config: LoggingConfig,
        total_steps: int,
        start_step: int = 0,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        self.path = output_dir / METRICS_FILE
        self._truncate_after(start_step)
        self.file = self.path.open("a", encoding="utf-8")
        # The default [tensorboard] is skipped quietly when tensorboard is not installed.
        names = [n for n in config.trackers() if n != "tensorboard" or installed("tensorboard")]
        self.trackers: list[Tracker] = open_trackers(
            names,
            output_dir,
            project=config.project or config.wandb_project or "alignlib",
            run_name=config.run_name or output_dir.resolve().name,
            run_config=run_config,
            start_step=start_step,
        )
        self.completions: CompletionFeed | None = None
        if config.completions and self.trackers:  # each step's samples as a table, too
            self.completions = CompletionFeed(output_dir / COMPLETIONS)
        self.progress: Progress | None = None
        if config.progress:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[stats]}"),
                console=Console(stderr=True),
            )
            self.task = self.progress.add_task(
                "train", total=total_steps, completed=start_step, stats=""
            )
            self.progress.start()

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines past the checkpoint so the file equals an uninterrupted run's.
        Rewritten atomically, and a line a kill cut short is dropped rather than fatal. A fresh
        run never deletes an earlier run's file (prepare_output_dir moves whole runs aside;
        this keeps the file even when RunLogger is used on its own)."""
        if not self.path.exists():
            return
        if step == 0:
            if self.path.stat().st_size:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                self.path.replace(self.path.with_name(f"{METRICS_FILE}.old-{stamp}"))
            return
        kept = [line for line, r in _parsed(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_name(f".tmp-{METRICS_FILE}")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **metrics}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for tracker in self.trackers:
            tracker.log(step, metrics)
        rows = self.completions.take(step) if self.completions is not None else []
        for tracker in self.trackers if rows else []:
            tracker.log_table(step, "completions", rows)
        if self.progress is not None:
            self.progress.update(self.task, completed=step, stats=_short(metrics))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        for tracker in self.trackers:
            tracker.close()
        self.file.close()


def _parsed(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) for the JSON lines of ``path``; a line cut short by a kill mid-write is
    skipped instead of making the whole run unreadable."""
    parsed = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            parsed.append((line, record))
    return parsed


def metrics_file(run_dir: str | Path) -> Path:
    """RUN/metrics.jsonl, which must exist."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a training run folder?")
    return path


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [record for _, record in _parsed(metrics_file(run_dir))]


def plot(run_dir: str | Path, output: str | Path | None = None) -> tuple[Path, str | None]:
    """The run's dashboard PNG (default: RUN/training_curves.png), and a note when the metrics
    file's last line was cut short: what a user of the method watches first (reward / held-out
    accuracy, loss, the method's signal, entropy, response length; see
    alignlib.trainer.dashboard). No complete row to plot is a ValueError naming the file."""
    from alignlib.trainer.dashboard import draw, plotted_rows

    records, note = plotted_rows(metrics_file(run_dir))
    target = Path(output) if output else Path(run_dir) / "training_curves.png"
    return draw(records, f"{Path(run_dir).resolve().name}: training curves", target), note


def plot_run(run_dir: str | Path) -> Path | None:
    """`plot` at the end of training: nothing to plot is a warning there, not a failure of the
    trained run."""
    try:
        return plot(run_dir)[0]
    except ValueError as exc:
        warn(f"no training curves: {exc}")
        return None
