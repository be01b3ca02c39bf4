"""`logging.report_to`: each tracker gets every step's metrics through its own library, a resumed
run continues the same tracker run, a missing package is one line with its pip command, and
metrics.jsonl is always written. wandb, trackio and MLflow are replaced by fakes that record
their calls (none is installed offline); TensorBoard writes real event files."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from alignlib.config.schema import CheckpointConfig, LoggingConfig
from alignlib.trainer.logs import RunLogger, read_metrics
from alignlib.trainer.trackers import installed

CALLS: list[tuple[str, Any]] = []


def fake_module(name: str, **functions: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    for attr, fn in functions.items():
        setattr(module, attr, fn)
    return module


def recorder(name: str, result: Any = None):
    def call(*args: Any, **kwargs: Any) -> Any:
        CALLS.append((name, (args, kwargs)))
        return result

    return call


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    CALLS.clear()
    counter = iter(range(100))

    def wandb_init(**kwargs: Any) -> Any:
        CALLS.append(("wandb.init", kwargs))
        run_id = kwargs.get("id") or f"wandb-{next(counter)}"
        return types.SimpleNamespace(
            id=run_id, log=recorder("wandb.log"), finish=recorder("wandb.finish")
        )

    def start_run(run_id: str | None = None, run_name: str | None = None) -> Any:
        CALLS.append(("mlflow.start_run", {"run_id": run_id, "run_name": run_name}))
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id or "mlflow-1"))

    def table(library: str):
        def make(**kwargs: Any) -> Any:
            return types.SimpleNamespace(library=library, **kwargs)

        return make

    modules = {
        "wandb": fake_module("wandb", init=wandb_init, Table=table("wandb")),
        "trackio": fake_module(
            "trackio",
            init=recorder("trackio.init"),
            log=recorder("trackio.log"),
            finish=recorder("trackio.finish"),
            Table=table("trackio"),
        ),
        "mlflow": fake_module(
            "mlflow",
            set_experiment=recorder("mlflow.set_experiment"),
            start_run=start_run,
            log_dict=recorder("mlflow.log_dict"),
            log_metrics=recorder("mlflow.log_metrics"),
            log_table=recorder("mlflow.log_table"),
            end_run=recorder("mlflow.end_run"),
        ),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return CALLS


def logged(out: Path, trackers: list[str], start: int = 0, steps: range = range(1, 3), **kw):
    config = LoggingConfig(progress=False, report_to=trackers, **kw)
    logger = RunLogger(out, config, total_steps=4, start_step=start, run_config={"seed": 0})
    for step in steps:
        logger.log(step, {"loss": 1.0 / step})
    logger.close()


def names(calls: list[tuple[str, Any]]) -> list[str]:
    return [name for name, _ in calls]


def test_wandb_logs_every_step_and_resumes_the_same_run(tmp_path: Path, fakes) -> None:
    logged(tmp_path, ["wandb"], project="demo")
    init = dict(fakes[0][1])
    assert init["project"] == "demo" and init["id"] is None and init["config"] == {"seed": 0}
    assert names(fakes) == ["wandb.init", "wandb.log", "wandb.log", "wandb.finish"]
    assert fakes[1][1] == (({"loss": 1.0},), {"step": 1})
    run_id = json.loads((tmp_path / "trackers.json").read_text())["wandb"]
    fakes.clear()
    logged(tmp_path, ["wandb"], start=2, steps=range(3, 5), project="demo")
    assert fakes[0][1]["id"] == run_id and fakes[0][1]["resume"] == "allow"
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]  # jsonl kept


def test_a_fresh_run_gets_a_new_wandb_run(tmp_path: Path, fakes) -> None:
    logged(tmp_path, ["wandb"])
    first = json.loads((tmp_path / "trackers.json").read_text())["wandb"]
    logged(tmp_path, ["wandb"])
    assert json.loads((tmp_path / "trackers.json").read_text())["wandb"] != first


def test_trackio_resumes_by_name(tmp_path: Path, fakes) -> None:
    logged(tmp_path / "my-run", ["trackio"])
    assert fakes[0] == (
        "trackio.init",
        ((), {"project": "alignlib", "name": "my-run", "config": {"seed": 0}, "resume": "never"}),
    )
    assert fakes[1] == ("trackio.log", (({"loss": 1.0},), {"step": 1}))
    fakes.clear()
    logged(tmp_path / "my-run", ["trackio"], start=2, steps=range(3, 4))
    assert fakes[0][1][1]["resume"] == "allow"


def test_mlflow_logs_and_resumes_its_run(tmp_path: Path, fakes) -> None:
    logged(tmp_path, ["mlflow"], project="exp", run_name="r1")
    assert names(fakes) == [
        "mlflow.set_experiment",
        "mlflow.start_run",
        "mlflow.log_dict",
        "mlflow.log_metrics",
        "mlflow.log_metrics",
        "mlflow.end_run",
    ]
    assert fakes[1][1] == {"run_id": None, "run_name": "r1"}
    assert fakes[3][1] == (({"loss": 1.0},), {"step": 1})
    fakes.clear()
    logged(tmp_path, ["mlflow"], start=2, steps=range(3, 4), project="exp")
    assert fakes[1][1] == {"run_id": "mlflow-1", "run_name": None}


@pytest.mark.skipif(not installed("tensorboard"), reason="tensorboard not installed")
def test_tensorboard_writes_events_and_purges_past_the_checkpoint(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged(tmp_path, ["tensorboard"], steps=range(1, 5))
    logged(tmp_path, ["tensorboard"], start=2, steps=range(3, 5))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]


def test_older_keys_still_work() -> None:
    assert LoggingConfig().trackers() == ["tensorboard"]
    assert LoggingConfig(tensorboard=False).trackers() == []
    assert LoggingConfig(report_to=[], tensorboard=True).trackers() == []


def test_wandb_project_adds_wandb(fakes) -> None:
    assert LoggingConfig(tensorboard=False, wandb_project="p").trackers() == ["wandb"]


@pytest.mark.parametrize("tracker", ["wandb", "trackio", "mlflow", "tensorboard"])
def test_a_missing_package_is_one_line(tracker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, tracker, None)  # import fails as if not installed
    with pytest.raises(
        ValidationError, match=rf"{tracker} is not installed: pip install {tracker}"
    ):
        LoggingConfig(report_to=[tracker])


def test_the_default_tensorboard_is_optional(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    config = LoggingConfig(progress=False)  # not listed explicitly: skipped quietly
    RunLogger(tmp_path, config, total_steps=1).close()
    assert not (tmp_path / "tensorboard").exists()


def test_resume_takes_true_false_or_a_checkpoint_folder(tmp_path: Path) -> None:
    assert CheckpointConfig(resume=True).resume is True
    assert CheckpointConfig(resume="false").resume is False
    step = tmp_path / "checkpoints" / "step-4"
    step.mkdir(parents=True)
    with pytest.raises(ValidationError, match="is not a checkpoint folder"):
        CheckpointConfig(resume=str(step))
    (step / "trainer_state.pt").write_bytes(b"")
    assert CheckpointConfig(resume=str(step)).resume == str(step)


def sample(step: int, index: int) -> dict[str, Any]:
    return {
        "step": step,
        "round": 0,
        "prompt_index": index,
        "sample": 0,
        "prompt": [{"role": "user", "content": f"q{index} | why?"}],  # a chat prompt
        "answer": "4",
        "completion": f"step {step} answer {index}\nis 4",
        "reward": 0.5,
        "rewards": {"math": 1.0, "format": 0.0},
        "correct": True,
        "tokens": 7,
        "truncated": False,
    }


def lines(*records: dict[str, Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def logged_dicts(calls: list[tuple[str, Any]], name: str) -> list[dict[str, Any]]:
    """The dict each ``name`` call logged (its first positional argument)."""
    return [args[0][0] for called, args in calls if called == name]


def test_each_steps_samples_become_a_table_in_every_tracker(tmp_path: Path, fakes) -> None:
    """The samples of RUN/completions.jsonl reach wandb, trackio and MLflow as the logged step's
    table: one row per sample, each reward its own column; samples a background generator wrote
    for a later step wait for it, and a half-written line for the next call."""
    config = LoggingConfig(progress=False, report_to=["wandb", "trackio", "mlflow"], completions=2)
    logger = RunLogger(tmp_path, config, total_steps=3)
    path = tmp_path / "completions.jsonl"
    third = lines(sample(3, 1))
    path.write_text(lines(sample(1, 0), sample(1, 1), sample(2, 0), sample(3, 0)) + third[:20])
    for step in (1, 2):
        logger.log(step, {"loss": 1.0})
    with path.open("a") as out:
        out.write(third[20:])
    logger.log(3, {"loss": 1.0})
    logger.close()
    tables = [d["completions"] for d in logged_dicts(fakes, "wandb.log") if "completions" in d]
    assert [[row[0] for row in t.data] for t in tables] == [[1, 1], [2], [3, 3]]
    columns = tables[0].columns
    first = dict(zip(columns, tables[0].data[0], strict=True))
    assert first["completion"] == "step 1 answer 0\nis 4" and first["reward/math"] == 1.0
    assert json.loads(first["prompt"]) == sample(1, 0)["prompt"]  # chat prompts as JSON text
    assert "rewards" not in columns
    trackio = [d["completions"] for d in logged_dicts(fakes, "trackio.log") if "completions" in d]
    assert [list(t.dataframe["step"]) for t in trackio] == [[1, 1], [2], [3, 3]]
    mlflow = [args[1] for called, args in fakes if called == "mlflow.log_table"]
    assert [m["artifact_file"] for m in mlflow] == [
        f"completions/step_00000{s}.json" for s in (1, 2, 3)
    ]
    assert mlflow[2]["data"]["prompt_index"] == [0, 1]


def test_no_table_without_logging_completions(tmp_path: Path, fakes) -> None:
    (tmp_path / "completions.jsonl").write_text(lines(sample(1, 0)))
    logged(tmp_path, ["wandb"], steps=range(1, 2))
    assert all("completions" not in d for d in logged_dicts(fakes, "wandb.log"))


@pytest.mark.skipif(not installed("tensorboard"), reason="tensorboard not installed")
def test_tensorboard_shows_each_steps_samples_as_text(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "completions.jsonl").write_text(lines(sample(1, 0), sample(2, 0), sample(2, 1)))
    logged(tmp_path, ["tensorboard"], steps=range(1, 3), completions=2)
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    texts = {
        e.step: e.tensor_proto.string_val[0].decode()
        for e in events.Tensors("completions/text_summary")
    }
    assert sorted(texts) == [1, 2]
    assert "step 2 answer 1<br>is 4" in texts[2] and "step 1 answer" not in texts[2]
    assert "q0 \\| why?" in texts[1]  # a | inside a cell is escaped, not a column
    assert texts[2].count("\n") == 3  # header, rule, two rows
