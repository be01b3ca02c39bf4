"""Lost work, code execution and corrupt files, through `alignlib train` as a user runs it.

Every case asserts the exit code, exactly one `alignlib: error:` (or warning) line naming the
file or key, no traceback, and that the run data already on disk is intact. One completed
6-step DPO run (checkpoints at steps 2 and 4) is trained once per module and copied per case.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from alignlib.cli import main
from alignlib.trainer import checkpoint as ckpt
from alignlib.trainer import loop

PAIRS = [
    {"prompt": f"What is {a} + {b}?", "chosen": f"{a + b}", "rejected": f"{a + b + 1}"}
    for a, b in [(2, 3), (4, 4), (7, 1), (6, 3)]
]
STEP2, STEP4 = "checkpoints/step-0000002", "checkpoints/step-0000004"


def write_config(folder: Path, output_dir: Path, **sections: dict[str, Any]) -> Path:
    cfg: dict[str, Any] = {
        "output_dir": str(output_dir),
        "model": {"name_or_path": "tiny:llama"},
        "data": {"path": str(folder / "pairs.jsonl")},
        "algorithm": {"name": "dpo", "params": {"beta": 0.1}},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "schedule": "constant"},
        "train": {"batch_size": 2, "micro_batch_size": 1, "max_steps": 6},
        "checkpoint": {"every": 2, "keep_last": 3},
        "logging": {"progress": False, "tensorboard": False, "plot": False},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    path = folder / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # A tiny model gains nothing from 2 threads, and on a busy 2-core machine they spin.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed run: metrics 1..6, final/, checkpoints at steps 2, 4 and 6."""
    folder = tmp_path_factory.mktemp("base")
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    assert main(["train", str(write_config(folder, folder / "run"))]) == 0
    return folder


@pytest.fixture
def run(base: Path, tmp_path: Path) -> Path:
    """A private copy of the completed run (same data file, so the config matches), without its
    last checkpoint: as if it had been stopped after step 5, so resuming trains steps 5–6."""
    shutil.copytree(base / "run", tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-0000006")
    return tmp_path / "run"


def train(base: Path, out: Path, *overrides: str, resume: bool = True) -> int:
    config = write_config(base, out)
    return main(["train", str(config), f"checkpoint.resume={str(resume).lower()}", *overrides])


def one_line(err: str, kind: str = "error") -> str:
    """The single `alignlib: KIND:` line of a run's stderr; never a traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"alignlib: {kind}:")]
    assert len(lines) == 1, err
    return lines[0]


def digest(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def moved(run: Path) -> Path:
    """The one sibling the earlier run in ``run`` was moved to."""
    (old,) = [p for p in run.parent.iterdir() if p.name.startswith(f"{run.name}.old-")]
    return old


def metrics(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def same_training(got: list[dict], want: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert {k: a[k] for k in ("loss", "grad_norm", "lr")} == {
            k: b[k] for k in ("loss", "grad_norm", "lr")
        }, a["step"]


# ------------------------------------------------------------------------- lost work
def test_fresh_run_twice_moves_the_earlier_run_aside(base: Path, run: Path, capsys) -> None:
    before = digest(run)
    assert train(base, run, resume=False) == 0
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("alignlib: moved the earlier run")]
    assert "Traceback" not in err and "alignlib: error" not in err
    assert moved(run).name in line
    assert digest(moved(run)) == before  # metrics, final/ bytes and checkpoints preserved
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4, 5, 6]
    assert (run / "final" / "model.safetensors").is_file()
    same_training(metrics(run), metrics(moved(run)))  # the same config retrains identically


def test_crash_at_step_one_leaves_the_earlier_run_intact(
    base: Path, run: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = digest(run)

    def crash(*args: Any, **kwargs: Any) -> None:
        raise ValueError("simulated failure at step 1")

    monkeypatch.setattr(loop, "update", crash)
    assert train(base, run, resume=False) == 2
    assert "simulated failure" in one_line(capsys.readouterr().err)
    assert digest(moved(run)) == before


def test_resume_without_checkpoints_starts_fresh_and_keeps_the_old_run(
    base: Path, run: Path, capsys
) -> None:
    shutil.rmtree(run / "checkpoints")
    before = digest(run)
    assert train(base, run, resume=True) == 0
    assert "nothing to resume" in capsys.readouterr().err
    assert digest(moved(run)) == before
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4, 5, 6]


def test_stale_tmp_and_old_folders_are_cleaned(base: Path, run: Path, capsys) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = child.pid if child.wait() == 0 else 0  # a pid that no longer runs
    tmp = run / "checkpoints" / f".tmp-step-0000006-{dead}"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"half")
    os.replace(run / "final", run / f".old-final-{dead}")  # killed between the two renames
    assert train(base, run) == 0
    err = capsys.readouterr().err
    assert "removed 2 unfinished folder(s)" in err and tmp.name in err
    assert "(restored as final)" in err
    assert not tmp.exists() and not (run / f".old-final-{dead}").exists()
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4, 5, 6]


def test_torn_last_metrics_line_does_not_block_resume(base: Path, run: Path) -> None:
    want = metrics(run)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 7, "loss": 0.6')  # a kill in the middle of a write
    assert train(base, run) == 0
    same_training(metrics(run), want)


# ------------------------------------------------------------------- resume checks config
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("algorithm.params.beta=0.5", "algorithm.params.beta 0.1 → 0.5"),
        ("algorithm.name=ipo", "algorithm.name dpo → ipo"),
        ("train.batch_size=4", "train.batch_size 2 → 4"),
        ("train.seed=1", "train.seed 0 → 1"),
        ("data.limit=3", "data.limit null → 3"),
        ("lora.enabled=true", "lora.enabled false → true"),
    ],
)
def test_resume_with_a_changed_fixed_key_is_refused(
    base: Path, run: Path, capsys, override: str, key: str
) -> None:
    before = digest(run)
    assert train(base, run, override) == 2
    line = one_line(capsys.readouterr().err)
    assert key in line and "checkpoint.resume: false" in line, line
    assert digest(run) == before


def test_resume_applies_a_changed_learning_rate(base: Path, run: Path, capsys) -> None:
    assert train(base, run, "optim.lr=0.001") == 0
    err = capsys.readouterr().err
    assert "applied the changed optim.lr 0.003 → 0.001" in err
    lrs = [r["lr"] for r in metrics(run)]
    assert lrs == [3e-3] * 4 + [1e-3] * 2  # the old lr before the checkpoint, the new after


def test_resume_applies_a_longer_run(base: Path, run: Path, capsys) -> None:
    assert train(base, run, "train.max_steps=8") == 0
    assert "train.max_steps 6 → 8" in capsys.readouterr().err
    assert [r["step"] for r in metrics(run)] == list(range(1, 9))


# ------------------------------------------------------------- fallback and corrupt files
def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPTIONS = {
    "truncated weights": lambda c: truncate(c / "model.safetensors"),
    "truncated state": lambda c: truncate(c / "trainer_state.pt"),
    "empty state": lambda c: (c / "trainer_state.pt").write_bytes(b""),
    "missing state": lambda c: (c / "trainer_state.pt").unlink(),
    "garbage weights header": lambda c: (c / "model.safetensors").write_bytes(b"\x10" + b"x" * 99),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_broken_latest_checkpoint_falls_back_to_the_previous_one(
    base: Path, run: Path, capsys, kind: str
) -> None:
    want = metrics(run)
    step2 = digest(run / STEP2)
    CORRUPTIONS[kind](run / STEP4)
    assert train(base, run) == 0
    err = capsys.readouterr().err
    assert "step-0000004" in one_line(err, "warning")
    assert f"resuming from {run / STEP2} (step 2)" in err
    same_training(metrics(run), want)  # bit-exact with the uninterrupted run
    assert digest(run / STEP2) == step2


def test_no_loadable_checkpoint_is_one_line(base: Path, run: Path, capsys) -> None:
    truncate(run / STEP4 / "model.safetensors")
    truncate(run / STEP2 / "trainer_state.pt")
    before = digest(run)
    assert train(base, run) == 2
    line = one_line(capsys.readouterr().err)
    assert "no loadable checkpoint" in line and "model.safetensors" in line
    assert digest(run) == before


class Payload:
    """Unpickling this opens (creates) ``marker``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("planted", ["payload", "legacy pickled rng"])
def test_planted_pickle_in_trainer_state_is_refused(
    base: Path, run: Path, tmp_path: Path, capsys, planted: str
) -> None:
    marker = tmp_path / "pwned"
    state = run / STEP4 / "trainer_state.pt"
    if planted == "payload":
        torch.save({"format": 2, "step": 4, "x": Payload(marker)}, state)
        control = tmp_path / "control.pt"
        torch.save({"x": Payload(tmp_path / "control")}, control)
        torch.load(control, weights_only=False)  # the payload is live when unpickled...
        assert (tmp_path / "control").exists()
    else:
        import numpy as np

        torch.save({"step": 4, "rng": {"numpy": np.random.get_state()}}, state)
    before = digest(run)
    assert train(base, run) == 2
    line = one_line(capsys.readouterr().err)
    assert "trainer_state.pt holds pickled Python objects" in line, line
    assert not marker.exists()  # ...and never is when resuming
    assert digest(run) == before


def test_truncated_safetensors_as_the_model_is_one_line(base: Path, tmp_path: Path, capsys):
    model = tmp_path / "model"
    shutil.copytree(base / "run" / "final", model)
    truncate(model / "model.safetensors")
    code = train(base, tmp_path / "out", f"model.name_or_path={model}", resume=False)
    assert code == 2
    line = one_line(capsys.readouterr().err)
    assert f"{model / 'model.safetensors'} is truncated" in line


def test_trainer_state_loads_with_weights_only(base: Path) -> None:
    state = torch.load(base / "run" / STEP4 / ckpt.STATE_FILE, weights_only=True)
    assert state["step"] == 4 and json.loads(state["config"])["algorithm.name"] == "dpo"
    assert isinstance(state["rng"]["python"]["state"], torch.Tensor)


def test_clip_cov_estimator_state_is_weights_only_safe(tmp_path: Path) -> None:
    from batches import rl_batch

    from alignlib import algorithms

    estimator = algorithms.get("clip_cov", ratio=0.02, cov_low=-100.0, cov_high=100.0)
    estimator.prepare(rl_batch(num_groups=4, group_size=4, width=8))
    torch.save(estimator.state_dict(), tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert loaded and all(isinstance(v["generator"], torch.Tensor) for v in loaded.values())


# ------------------------------------------------------------------------------ disk full
def enospc(*args: Any, **kwargs: Any) -> None:
    if args and isinstance(args[0], Path) and not args[0].is_dir():
        args[0].write_bytes(b"partial")  # some bytes made it before the disk filled up
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def storage_full(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")


STEP6 = "checkpoints/step-0000006"


@pytest.mark.parametrize(
    ("target", "fake", "steps", "written"),
    [
        (f"{ckpt.__name__}.write_state", enospc, 8, STEP6),
        (f"{ckpt.__name__}.save_model", storage_full, 8, STEP6),
        ("alignlib.trainer.state.save_model", enospc, 6, "final"),
    ],
)
def test_disk_full_is_one_line_and_keeps_the_checkpoints(
    base: Path, run: Path, capsys, monkeypatch: pytest.MonkeyPatch, target, fake, steps, written
) -> None:
    kept = {name: digest(run / name) for name in (STEP2, STEP4, "final")}
    monkeypatch.setattr(target, fake)
    assert train(base, run, f"train.max_steps={steps}") == 2
    line = one_line(capsys.readouterr().err)
    assert f"disk full (no space left on device) while writing {run / written}" in line, line
    assert {name: digest(run / name) for name in (STEP2, STEP4, "final")} == kept
    assert not list(run.rglob(".tmp-*"))
    # A failed step-6 checkpoint leaves nothing; a failed final/ leaves the last step resumable.
    assert (run / STEP6 / ckpt.STATE_FILE).is_file() == (written == "final")


# --------------------------------------------------------------------- online, folders
def test_online_run_twice_keeps_the_first_and_resume_applies_lr(tmp_path: Path, capsys) -> None:
    out, prompts = tmp_path / "online", tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in PAIRS))
    config = write_config(
        tmp_path,
        out,
        data={"path": str(prompts)},
        algorithm={"name": "grpo", "params": {}},
        optim={"lr": 1e-2},
        train={"max_steps": 4},
        rollout={"n": 2, "max_new_tokens": 4},
        online={"prompts_per_step": 2, "rewards": [{"name": "online_rewards:digit_share"}]},
    )
    assert main(["train", str(config)]) == 0
    first = digest(out)
    assert main(["train", str(config)]) == 0
    assert digest(moved(out)) == first and "moved the earlier run" in capsys.readouterr().err
    shutil.rmtree(out / STEP4)  # as if stopped after step 3: resuming trains steps 3–4
    assert main(["train", str(config), "checkpoint.resume=true", "optim.lr=0.02"]) == 0
    assert "applied the changed optim.lr 0.01 → 0.02" in capsys.readouterr().err
    assert [r["lr"] for r in metrics(out)] == [1e-2, 1e-2, 2e-2, 2e-2]
    assert main(["train", str(config), "checkpoint.resume=true", "rollout.n=4"]) == 2
    assert "rollout.n 2 → 4" in one_line(capsys.readouterr().err)


def test_relative_output_dir_is_moved_to_a_sibling_and_named_relatively(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alignlib.trainer.run_dir import prepare_output_dir

    monkeypatch.chdir(tmp_path)
    run = Path("runs/quickstart")
    (run / "final").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    target = prepare_output_dir(run, resume=False)
    assert target is not None and target.parent == (tmp_path / "runs").resolve()
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"alignlib: moved the earlier run in {run} to {run}.old-")
    assert (target / "metrics.jsonl").read_text() == '{"step": 1}\n' and run.is_dir()
    assert not any(run.iterdir())


def test_user_files_in_the_output_dir_stay_and_live_writers_are_left_alone(
    tmp_path: Path, capsys
) -> None:
    from alignlib.trainer.run_dir import prepare_output_dir

    run = tmp_path / "run"
    (run / "checkpoints" / f".tmp-step-0000002-{os.getpid()}").mkdir(parents=True)  # ours
    live = run / "checkpoints" / f".tmp-step-0000004-{os.getppid()}"  # a running writer
    live.mkdir()
    (run / "notes.txt").write_text("mine")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    target = prepare_output_dir(run, resume=False)
    assert target is not None and (run / "notes.txt").read_text() == "mine"
    assert (target / "metrics.jsonl").is_file() and not (run / "metrics.jsonl").exists()
    assert (target / "checkpoints" / live.name).is_dir()  # moved with its run, not deleted
    err = capsys.readouterr().err
    assert "removed 1 unfinished folder(s)" in err and "moved the earlier run" in err


def test_config_fingerprint_names_sections_and_sub_keys() -> None:
    from alignlib.config.schema import RunConfig
    from alignlib.trainer.resume import config_changes, config_leaves

    offline = config_leaves(RunConfig())
    online = RunConfig(rollout={"n": 2}, optim={"lr": 1e-3}, logging={"plot": False})
    fixed, applied = config_changes(offline, config_leaves(online))
    assert fixed == ["rollout null → set"]
    assert applied == ["logging.plot true → false", "optim.lr 5e-07 → 0.001"]
    added = config_leaves(RunConfig(algorithm={"name": "dpo", "params": {"beta": 0.2}}))
    assert config_changes(offline, added)[0] == ["algorithm.params.beta unset → 0.2"]
    del added["train.seed"]  # an option another alignlib version does not know is no change
    assert config_changes(offline, added)[0] == ["algorithm.params.beta unset → 0.2"]
