"""Checkpoints in Hugging Face format plus the trainer state, written atomically and read back
without unpickling code.

A run folder may come from someone else (shared, downloaded), so ``trainer_state.pt`` holds
tensors and plain containers only and is always read with ``torch.load(weights_only=True)``:
RNG states are stored as tensors and ints, never as pickled Python objects. Reading never
mutates the model: a checkpoint is read and validated completely first, so a truncated newest
checkpoint can be skipped in favour of the one before it.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from alignlib.console import warn
from alignlib.models import CorruptFileError, check_safetensors

STATE_FILE = "trainer_state.pt"
STATE_FORMAT = 2  # 2: weights_only-safe state with a config fingerprint
STEP_DIR = re.compile(r"^step-(\d+)$")
LOW_SPACE_BYTES = 16 * 2**20


class CheckpointError(ValueError):
    """A checkpoint or run-folder problem the user fixes: the CLI prints it as one line."""


# --------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and ints, so it loads with weights_only=True."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {
        "python": {
            "version": int(version),
            "state": torch.tensor(words, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(w) for w in py["state"].tolist()), py["gauss"]))
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------ writing
def save_model(
    directory: Path,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """save_pretrained for the model (the adapter alone for peft) and the tokenizer;
    ``weights``: the full state dict to write instead of the model's own (FSDP2 shards)."""
    model.save_pretrained(directory, safe_serialization=True, state_dict=weights)
    tokenizer.save_pretrained(directory)


def write_state(path: Path, state: dict[str, Any]) -> None:
    """The one place the trainer state reaches the disk (tests simulate a full disk here)."""
    torch.save(state, path)


def is_disk_full(exc: BaseException, folder: Path) -> bool:
    """ENOSPC / EDQUOT, as an OSError or as the text other writers wrap it in (safetensors'
    `StorageFull`, torch's `file write failed` when the disk has no room left)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    if "no space left" in text or "storagefull" in text or "quota exceeded" in text:
        return True
    try:
        return "write failed" in text and shutil.disk_usage(folder).free < LOW_SPACE_BYTES
    except OSError:
        return False


def atomic_directory_write(final: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` then rename into place: a crash never leaves a half checkpoint,
    and a failed write (a full disk) removes its partial copy and leaves ``final`` as it was."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc, final.parent):
            raise CheckpointError(
                f"disk full (no space left on device) while writing {final}: nothing saved "
                f"before in {final.parent} was changed; free space there, then rerun with "
                "checkpoint.resume: true"
            ) from None
        raise
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def save_checkpoint(
    output_dir: Path,
    step: int,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    state: dict[str, Any],
    keep_last: int,
    weights: dict[str, torch.Tensor] | None = None,
    extras: Sequence[Callable[[Path], None]] = (),
) -> Path:
    """checkpoints/step-N with the model, tokenizer and trainer state (and whatever each of
    ``extras`` writes into the folder: a critic, a moving reference); prunes old ones only
    after the new one is complete."""

    def write(tmp: Path) -> None:
        save_model(tmp, model, tokenizer, weights)
        for extra in extras:
            extra(tmp)
        write_state(tmp / STATE_FILE, state)

    path = atomic_directory_write(output_dir / "checkpoints" / f"step-{step:07d}", write)
    for old in sorted(step_dirs(output_dir))[:-keep_last]:
        shutil.rmtree(old[1], ignore_errors=True)
    return path


# ------------------------------------------------------------------------------------ reading
def step_dirs(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoints/step-N folder, loadable or not."""
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return found


def latest_checkpoint(output_dir: Path) -> Path | None:
    dirs = sorted(step_dirs(output_dir))
    return dirs[-1][1] if dirs else None


def _first_line(exc: BaseException) -> str:
    """The gist of a library's error: its first sentence, short."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return text.splitlines()[0].split(". ")[0][:100]


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return []


def read_state(path: Path) -> dict[str, Any]:
    """The trainer state, unpickling nothing but tensors and plain containers."""
    if not path.is_file():
        raise CorruptFileError(f"{path} is missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise CheckpointError(
                f"{path} holds pickled Python objects ({', '.join(unsafe[:3])}), not only "
                "tensors: refusing to load it, since unpickling can run code; delete that "
                "checkpoint folder, or set checkpoint.resume: false to start a new run"
            ) from None
        raise CorruptFileError(f"{path} is corrupt ({_first_line(exc)})") from None
    except Exception as exc:
        raise CorruptFileError(f"{path} is truncated or corrupt ({_first_line(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CorruptFileError(f"{path} is not a trainer state of this alignlib version")
    return state


@dataclass
class Loaded:
    """A checkpoint read and validated in full, not yet applied to anything."""

    path: Path
    state: dict[str, Any]
    weights: dict[str, torch.Tensor]
    adapter: bool


def read_weights(directory: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The saved weights (the peft adapter's alone when there is one), every file checked."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CorruptFileError(f"{directory} holds no *.safetensors weights")
    for file in files:
        check_safetensors(file)
    adapter = (directory / "adapter_config.json").is_file()
    try:
        if adapter:
            from peft.utils import load_peft_weights

            return load_peft_weights(str(directory), device="cpu"), True
        from safetensors.torch import load_file

        weights: dict[str, torch.Tensor] = {}
        for file in files:
            weights.update(load_file(file))
        return weights, False
    except Exception as exc:
        raise CorruptFileError(f"{directory}: unreadable weights ({_first_line(exc)})") from None


def load_checkpoint(path: Path) -> Loaded:
    """The checkpoint folder ``path`` (`checkpoint.resume: PATH`): no fallback to another."""
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"checkpoint.resume {path}: not a checkpoint folder (no {STATE_FILE}); give a "
            "checkpoints/step-N folder of a run, or true for this run's newest"
        )
    try:
        weights, adapter = read_weights(path)
        return Loaded(path, read_state(path / STATE_FILE), weights, adapter)
    except CorruptFileError as exc:
        raise CheckpointError(f"checkpoint.resume {path}: {exc}") from None


def load_newest(output_dir: Path) -> Loaded | None:
    """The newest checkpoint that reads completely; a broken newer one is skipped with one
    warning line. None when there is none; one error line when none of them reads."""
    found = sorted(step_dirs(output_dir), reverse=True)
    problems = []
    for _, path in found:
        try:
            state = read_state(path / STATE_FILE)
            weights, adapter = read_weights(path)
        except CorruptFileError as exc:
            problems.append(f"{path.name}: {str(exc).replace(f'{path}{os.sep}', '')}")
            warn(f"skipping checkpoint {path.name}, trying an older one: {exc}")
            continue
        return Loaded(path, state, weights, adapter)
    if not found:
        return None
    raise CheckpointError(
        f"no loadable checkpoint in {output_dir / 'checkpoints'} ({'; '.join(problems)}): "
        "delete the broken step-* folders, or set checkpoint.resume: false to start a new run"
    )


def apply_weights(model: nn.Module, loaded: Loaded) -> None:
    """Load the read weights into ``model`` in place (full model or peft adapter)."""
    if loaded.adapter:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, loaded.weights)
        return
    missing, unexpected = model.load_state_dict(loaded.weights, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # a tied head is saved once
        raise CheckpointError(
            f"checkpoint {loaded.path} does not match the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )


def load_weights(model: nn.Module, directory: Path) -> None:
    """Load saved weights into ``model`` in place (full model or peft adapter)."""
    weights, adapter = read_weights(directory)
    apply_weights(model, Loaded(directory, {}, weights, adapter))
