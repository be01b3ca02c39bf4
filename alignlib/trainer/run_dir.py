"""A run folder holds one run, and no run destroys another.

``prepare_output_dir`` runs once at the start of every run (offline, online, INPO), after the
config, data and model have loaded and before anything is written:

- a fresh run (``checkpoint.resume: false``, or a resume with nothing to resume) into a folder
  that holds an earlier run moves that run aside to a sibling ``NAME.old-YYYYmmdd-HHMMSS`` and
  says so in one line. A sibling, not a sub-folder: the earlier run stays a complete run folder
  (``alignlib plot``/``eval`` and copying work on it as before), the new folder holds only the
  new run, nothing nests when it happens again, and when the folder holds nothing but run
  outputs the move is a single atomic rename;
- a resume keeps the folder; the resume itself picks the newest loadable checkpoint;
- either way, ``.tmp-*`` / ``.old-*`` folders that a kill left behind in the middle of an atomic
  write are cleaned first (a complete ``.old-X`` whose replacement never landed is put back).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from alignlib.console import notice
from alignlib.trainer.checkpoint import step_dirs

# Everything a run writes into its folder (offline, online, INPO, in-loop eval, wandb).
ARTIFACTS = frozenset(
    {
        "metrics.jsonl",
        "final",
        "merged",
        "checkpoints",
        "tensorboard",
        "training_curves.png",
        "iterations.jsonl",
        "eval",
        "rollout_adapter",
        "wandb",
        "trackers.json",
    }
)
ITERATION_DIR = re.compile(r"^iteration-\d+$")
STALE = re.compile(r"^\.(tmp|old)-(?P<name>.+)-(?P<pid>\d+)$")


def _is_artifact(path: Path) -> bool:
    return path.name in ARTIFACTS or bool(ITERATION_DIR.match(path.name))


def run_artifacts(out_dir: Path) -> list[Path]:
    """What an earlier run left in ``out_dir`` (empty for a new or empty folder)."""
    if not out_dir.is_dir():
        return []
    return sorted(child for child in out_dir.iterdir() if _is_artifact(child))


def has_checkpoints(out_dir: Path) -> bool:
    """Something to resume: checkpoints/step-N here, or in an INPO iteration folder."""
    if step_dirs(out_dir):
        return True
    return any(
        step_dirs(child) for child in run_artifacts(out_dir) if ITERATION_DIR.match(child.name)
    )


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers from an earlier run in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_folder(folder: Path) -> list[str]:
    """Remove dead writers' .tmp-X-PID; for .old-X-PID put it back when X is missing (the kill
    came between the two renames of the atomic write), else remove it."""
    cleaned = []
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = STALE.match(child.name)
        if not match or not child.is_dir() or _alive(int(match["pid"])):
            continue
        original = folder / match["name"]
        if match[1] == "old" and not original.exists():
            os.replace(child, original)
            cleaned.append(f"{child.name} (restored as {original.name})")
        else:
            shutil.rmtree(child, ignore_errors=True)
            cleaned.append(child.name)
    return cleaned


def clean_stale(out_dir: Path) -> list[str]:
    """Clean leftovers of interrupted atomic writes in the run folder and its checkpoints."""
    folders = [out_dir, out_dir / "checkpoints"]
    for child in run_artifacts(out_dir):
        if ITERATION_DIR.match(child.name):
            folders += [child, child / "checkpoints"]
    cleaned = [item for folder in folders for item in _clean_folder(folder)]
    if cleaned:
        notice(
            f"removed {len(cleaned)} unfinished folder(s) left by an interrupted run in "
            f"{out_dir}: {', '.join(cleaned)}"
        )
    return cleaned


def _sibling(out_dir: Path) -> Path:
    resolved = out_dir.resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = resolved.with_name(f"{resolved.name}.old-{stamp}")
    counter = 2
    while target.exists():
        target = resolved.with_name(f"{resolved.name}.old-{stamp}-{counter}")
        counter += 1
    return target


def move_aside(out_dir: Path, artifacts: list[Path]) -> Path:
    """Move the earlier run to a sibling folder: the whole folder in one rename when it holds
    only run outputs, else (the folder also holds the user's own files, or is the working
    directory) the run outputs one by one."""
    target = _sibling(out_dir)
    resolved = out_dir.resolve()
    only_outputs = all(_is_artifact(child) for child in out_dir.iterdir())
    if only_outputs and not Path.cwd().resolve().is_relative_to(resolved):
        os.replace(out_dir, target)
        out_dir.mkdir()
    else:
        target.mkdir()
        for item in artifacts:
            os.replace(item, target / item.name)
    return target


def prepare_output_dir(out_dir: Path, resume: bool) -> Path | None:
    """Make ``out_dir`` ready for this run; return where an earlier run was moved, if any."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_stale(out_dir)
    if resume and has_checkpoints(out_dir):
        return None
    artifacts = run_artifacts(out_dir)
    if not artifacts:
        if resume:  # resume: true may be always on (preemptible jobs); then say what happens
            notice(f"checkpoint.resume: no checkpoint in {out_dir} yet; starting a new run")
        return None
    target = move_aside(out_dir, artifacts)
    shown = target if out_dir.is_absolute() else Path(os.path.relpath(target))
    if resume:
        notice(
            f"nothing to resume in {out_dir} (no checkpoints): moved its earlier run to "
            f"{shown} and starting a new run"
        )
    else:
        notice(
            f"moved the earlier run in {out_dir} to {shown} (checkpoint.resume: false starts "
            "a new run; set it to true to continue a run instead)"
        )
    return target
