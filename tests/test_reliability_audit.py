"""Mistakes a user audit found that ran silently or ended in a traceback, through `alignlib
train` as a user runs it: each now gets one line (or a notice), and the legitimate variant of
the same input still trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_reliability_runs import PAIRS, digest, metrics, one_line, write_config

from alignlib.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(2, 3), (4, 4)]]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return tmp_path


def online(folder: Path, **online: int) -> Path:
    return write_config(
        folder,
        folder / "online",
        data={"path": str(folder / "prompts.jsonl")},
        algorithm={"name": "grpo", "params": {}},
        train={"max_steps": 1},
        rollout={"n": 2, "max_new_tokens": 4},
        online={"prompts_per_step": 2, "micro_batch_size": 4, **online},
    )


def test_a_group_relative_advantage_with_one_rollout_per_prompt_is_refused(
    folder: Path, capsys
) -> None:
    config = str(online(folder))
    assert main(["train", config, "rollout.n=1"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "rollout.n" in line and "every advantage is 0" in line and "2 or more" in line
    assert not (folder / "online").exists()  # refused before anything was written
    # RLOO's leave-one-out baseline too; a plain reward (REINFORCE++ without a group baseline)
    # has no group to compare within, so one rollout per prompt is legitimate there.
    rloo = "algorithm.components={reference: old, advantage: rloo}"
    assert main(["train", config, "rollout.n=1", "algorithm.name=null", rloo]) == 2
    assert "LeaveOneOut" in one_line(capsys.readouterr().err)
    for name, advantage in (("gpg", "CorrectedGroupMean"), ("grpo_passk", "MaxAtK")):
        assert main(["train", config, "rollout.n=1", f"algorithm.name={name}"]) == 2
        assert advantage in one_line(capsys.readouterr().err)
    # PKPO's pass@k needs k rollouts per prompt (k = 4 by default; this config samples 2).
    assert main(["train", config, "algorithm.name=pkpo"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "MaxAtK" in line and "n = 2" in line and "4 or more" in line
    assert main(["train", config, "algorithm.name=passk_training"]) == 2
    assert "PassAtKTraining" in one_line(capsys.readouterr().err)
    plain = "algorithm.components={reference: old, advantage: reinforce_pp}"
    assert main(["train", config, "rollout.n=1", "algorithm.name=null", plain]) == 0


def test_more_mini_batches_than_prompts_is_refused_in_one_line(folder: Path, capsys) -> None:
    assert main(["train", str(online(folder, mini_batches=4))]) == 2
    line = one_line(capsys.readouterr().err)
    assert "online.mini_batches (4) is more than online.prompts_per_step (2)" in line
    assert "online: online." not in line  # the key is named once
    assert main(["train", str(online(folder, mini_batches=2))]) == 0


def test_fewer_rows_than_a_batch_warns_and_trains_them(folder: Path, capsys) -> None:
    config = write_config(folder, folder / "run", train={"batch_size": 8, "micro_batch_size": 4})
    assert main(["train", str(config), "train.max_steps=null"]) == 0
    line = one_line(capsys.readouterr().err, "warning")
    assert "4 training examples, fewer than train.batch_size (8)" in line
    assert [r["step"] for r in metrics(folder / "run")] == [1]


def test_resume_into_an_empty_folder_says_it_starts_a_new_run(folder: Path, capsys) -> None:
    config = write_config(folder, folder / "run", train={"max_steps": 1})
    assert main(["train", str(config), "checkpoint.resume=true"]) == 0
    err = capsys.readouterr().err
    assert "checkpoint.resume: no checkpoint in" in err and "starting a new run" in err


def test_resume_refuses_a_data_file_whose_contents_changed(folder: Path, capsys) -> None:
    run = folder / "run"
    config = str(write_config(folder, run, train={"max_steps": 4}))
    assert main(["train", config]) == 0
    capsys.readouterr()
    before = digest(run)
    assert main(["train", config, "checkpoint.resume=true"]) == 0  # unchanged data: resumes
    assert "resuming from" in capsys.readouterr().err
    data = folder / "pairs.jsonl"
    data.write_text(data.read_text().replace("What is", "Compute"))
    assert main(["train", config, "checkpoint.resume=true"]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"data.path {data} has changed since the checkpoint" in line
    assert "step-0000004" in line and "checkpoint.resume: false" in line  # the last step's
    assert digest(run).keys() >= before.keys()


def test_output_dir_that_is_a_file_is_refused(folder: Path, capsys) -> None:
    (folder / "afile").write_text("mine")
    for target in (folder / "afile", folder / "afile" / "run"):
        assert main(["train", str(write_config(folder, target))]) == 2
        line = one_line(capsys.readouterr().err)
        assert f"output_dir: {target}" in line and "a file; give a folder path" in line
    assert (folder / "afile").read_text() == "mine"


def test_resume_accepts_a_preset_parameter_spelled_at_its_default(folder: Path, capsys) -> None:
    run = folder / "run"
    config = str(write_config(folder, run, algorithm={"name": "dpo", "params": {}}))
    assert main(["train", config, "train.max_steps=4"]) == 0
    capsys.readouterr()
    resume = [config, "train.max_steps=6", "checkpoint.resume=true"]
    assert main(["train", *resume, "algorithm.params.beta=0.1"]) == 0  # DPO's default β
    assert "resuming from" in capsys.readouterr().err
    assert main(["train", *resume, "algorithm.params.beta=0.2"]) == 2
    assert "algorithm.params.beta" in one_line(capsys.readouterr().err)


def test_each_step_logs_the_learning_rate_it_used(folder: Path) -> None:
    config = write_config(
        folder, folder / "run", optim={"lr": 0.03, "schedule": "linear", "warmup_ratio": 0.0}
    )
    assert main(["train", str(config), "train.max_steps=3", "checkpoint.every=null"]) == 0
    assert [r["lr"] for r in metrics(folder / "run")] == pytest.approx([0.03, 0.02, 0.01])


def test_rows_cut_to_the_length_limits_are_counted_in_one_warning(folder: Path, capsys) -> None:
    long = [{**p, "rejected": p["rejected"] + " and more" * 40} for p in PAIRS]
    data = folder / "long.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in long))
    config = write_config(folder, folder / "run", data={"path": str(data)})
    limits = ["data.max_completion_length=16", "train.max_steps=1"]
    assert main(["train", str(config), *limits]) == 0
    line = one_line(capsys.readouterr().err, "warning")
    assert "cut 4 of 8 completions to 16 tokens (data.max_completion_length)" in line
    assert "prompts" not in line  # the prompts fit
    assert main(["train", str(config), "train.max_steps=1"]) == 0  # within the default limits
    assert "warning" not in capsys.readouterr().err


def results_file(folder: Path, name: str, scores: dict[str, tuple[list[str], float]]) -> str:
    """A results.json of `alignlib eval`: per benchmark, its problems and pass@1."""
    metrics = {b: {"num_problems": len(ps), "pass@1": s} for b, (ps, s) in scores.items()}
    average = sum(s for _, s in scores.values()) / len(scores)
    metrics["average"] = {
        "num_problems": sum(len(ps) for ps, _ in scores.values()),
        "pass@1": average,
    }
    records = {b: [{"problem": p} for p in ps] for b, (ps, _) in scores.items()}
    path = folder / name / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"model": name, "metrics": metrics, "records": records}))
    return str(path)


def test_compare_charts_only_benchmarks_every_file_scored_alike(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import alignlib.eval.report as report

    drawn: dict = {}

    def draw(values: dict, columns: list[str], metric: str, path: Path) -> Path:
        drawn.update(values, columns=columns)
        return path

    monkeypatch.setattr(report, "_draw", draw)
    a = results_file(tmp_path, "a", {"gsm8k": (["p1", "p2"], 0.5), "math500": (["q1"], 1.0)})
    b = results_file(tmp_path, "b", {"aime24": (["r1"], 0.0), "gsm8k": (["p2", "p1"], 0.25)})
    assert main(["eval", "--compare", a, b, "--labels", "a,b"]) == 0
    assert capsys.readouterr().err == (
        "alignlib: --compare: charting gsm8k (and their average) only; left out math500 (not in "
        f"{b}); aime24 (not in {a})\n"
    )
    # The averages are over gsm8k alone, not a's stored 0.75 over gsm8k and math500.
    assert drawn == {"a": [0.5, 0.5], "b": [0.25, 0.25], "columns": ["gsm8k", "average"]}
    c = results_file(tmp_path, "c", {"gsm8k": (["p1"], 1.0)})  # gsm8k with --limit 1
    assert main(["eval", "--compare", a, c]) == 2
    assert one_line(capsys.readouterr().err) == (
        "alignlib: error: --compare: the results files share no benchmark scored on the same "
        f"problems (gsm8k (different problems: 2 in {a}, 1 in {c}); math500 (not in {c})); "
        "evaluate the runs on the same benchmarks and --limit"
    )


def test_eval_output_dir_inside_a_file_is_refused_before_the_model_loads(
    tmp_path: Path, capsys
) -> None:
    bench = tmp_path / "b.jsonl"
    bench.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    (tmp_path / "afile").write_text("mine")
    out = tmp_path / "afile" / "out"
    argv = ["eval", "--model", "tiny:llama", "--benchmarks", str(bench), "--output-dir", str(out)]
    assert main([*argv, "--max-new-tokens", "2"]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"alignlib: error: --output-dir {out} is inside {tmp_path / 'afile'}, which is a file; "
        "give a folder path"
    )
