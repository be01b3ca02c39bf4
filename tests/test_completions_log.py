"""`logging.completions`: RUN/completions.jsonl holds every sample of the first k prompts of each
step with the reward its text earned; a resumed run writes each step once, as the
uninterrupted run does; a tracker shows each step's samples as a table; an offline run is
refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from online_rewards import digit_share
from test_online import make_config
from test_trainer import interrupted_then_resumed

from alignlib.cli import main
from alignlib.config import load_config
from alignlib.trainer.completions_log import CompletionLog, table_row
from alignlib.trainer.loop import Trainer
from alignlib.trainer.trackers import installed, markdown_table

pytestmark = pytest.mark.usefixtures("one_thread")


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]


def test_every_sample_of_the_first_prompts_with_the_reward_its_text_earned(
    tmp_path: Path,
) -> None:
    logging = {"completions": 4, "progress": False, "plot": False}
    # A completion is correct above a digit share of 0.2: some prompts solved, some not.
    config = make_config(tmp_path, logging=logging, online={"correct_threshold": 0.2})
    result = Trainer(load_config(config)).train()
    logged = records(result.output_dir)
    assert len(logged) == 2 * 4 * 4  # steps × prompts × rollout.n
    assert 0 < result.history[0]["rollout/accuracy"] < result.history[0]["rollout/solved_frac"]
    for record in logged:
        assert record["reward"] == pytest.approx(digit_share(record["completion"]), abs=1e-6)
        assert record["rewards"] == {"digit_share": pytest.approx(record["reward"], abs=1e-6)}
        assert record["prompt"] and record["tokens"] > 0 and record["round"] == 0
    for step, metrics in enumerate(result.history, start=1):
        rewards = [r["reward"] for r in logged if r["step"] == step]
        assert len({(r["prompt_index"], r["sample"]) for r in logged if r["step"] == step}) == 16
        # Every prompt of the step is logged, so their mean is the step's logged mean.
        assert sum(rewards) / len(rewards) == pytest.approx(metrics["rollout/reward_mean"])
        truncated = [r["truncated"] for r in logged if r["step"] == step]
        assert sum(truncated) / len(truncated) == pytest.approx(metrics["rollout/truncated_frac"])
        correct = [r["correct"] for r in logged if r["step"] == step]
        assert sum(correct) / len(correct) == pytest.approx(metrics["rollout/accuracy"])
        solved = {r["prompt_index"] for r in logged if r["step"] == step and r["correct"]}
        assert len(solved) / 4 == pytest.approx(metrics["rollout/solved_frac"])


def test_a_resumed_run_logs_each_step_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {
        "train": {"max_steps": 4},
        "checkpoint": {"every": 2},
        "logging": {"completions": 2, "progress": False, "plot": False},
    }
    straight = Trainer(load_config(make_config(tmp_path, "straight", **settings))).train()
    resumed = interrupted_then_resumed(make_config(tmp_path, "resumed", **settings), monkeypatch, 3)
    want, got = records(straight.output_dir), records(resumed.output_dir)
    assert [r["step"] for r in got] == [r["step"] for r in want] == sorted(r["step"] for r in want)
    assert got == want


def test_a_resume_drops_later_steps_and_a_half_written_line(tmp_path: Path) -> None:
    path = tmp_path / "completions.jsonl"
    lines = [json.dumps({"step": step, "sample": s}) for step in (1, 2, 3) for s in (0, 1)]
    path.write_text("".join(f"{line}\n" for line in lines) + '{"step": 3, "prom')
    CompletionLog(path, 2, start=2)
    assert path.read_text().splitlines() == lines[:4]
    CompletionLog(path, 2, start=0)  # a fresh run starts a fresh log
    assert not path.exists()


def test_an_offline_run_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(tmp_path, logging={"completions": 2})
    assert main(["train", str(config), "rollout=null", "algorithm.name=sft"]) == 2
    err = capsys.readouterr().err.strip()
    assert "logging.completions" in err and "rollout:" in err and "\n" not in err, err


@pytest.mark.skipif(not installed("tensorboard"), reason="tensorboard not installed")
def test_tensorboard_shows_each_steps_samples(tmp_path: Path) -> None:
    """An online run with a tracker: each step's samples in completions.jsonl are that step's
    table in TensorBoard (its text tab), one row per sample."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging = {"completions": 2, "report_to": ["tensorboard"], "tensorboard": True}
    result = Trainer(load_config(make_config(tmp_path, logging=logging))).train()
    events = EventAccumulator(str(result.output_dir / "tensorboard"), {"tensors": 0})
    events.Reload()
    tables = {
        e.step: e.tensor_proto.string_val[0].decode()
        for e in events.Tensors("completions/text_summary")
    }
    logged = records(result.output_dir)
    assert sorted(tables) == [1, 2]
    for step, table in tables.items():
        samples = [r for r in logged if r["step"] == step]
        assert len(table.splitlines()) == 2 + len(samples) == 2 + 2 * 4  # header, rule, rows
        rows = table.splitlines()[2:]
        for row, sample in zip(rows, samples, strict=True):
            assert markdown_table([table_row(sample)]).splitlines()[2] == row
