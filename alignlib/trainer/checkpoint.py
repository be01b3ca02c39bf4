"""Checkpoints in Hugging Face format plus the trainer state, written atomically."""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

STATE_FILE = "trainer_state.pt"
STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_model(directory: Path, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """save_pretrained for the model (the adapter alone for peft) and the tokenizer."""
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def atomic_directory_write(final: Path, write: Any) -> Path:
    """Call ``write(tmp_dir)`` then rename into place: a crash never leaves a half checkpoint."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
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
) -> Path:
    """checkpoints/step-N with the model, tokenizer and trainer state; prunes old ones."""

    def write(tmp: Path) -> None:
        save_model(tmp, model, tokenizer)
        torch.save(state, tmp / STATE_FILE)

    path = atomic_directory_write(output_dir / "checkpoints" / f"step-{step:07d}", write)
    for old in sorted(_step_dirs(output_dir))[:-keep_last]:
        shutil.rmtree(old[1], ignore_errors=True)
    return path


def _step_dirs(output_dir: Path) -> list[tuple[int, Path]]:
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return found


def latest_checkpoint(output_dir: Path) -> Path | None:
    dirs = sorted(_step_dirs(output_dir))
    return dirs[-1][1] if dirs else None


def load_weights(model: nn.Module, directory: Path) -> None:
    """Load saved weights into ``model`` in place (full model or peft adapter)."""
    if (directory / "adapter_config.json").is_file():
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        set_peft_model_state_dict(model, load_peft_weights(str(directory)))
        return
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"}
    if unexpected or set(missing) - tied:
        raise RuntimeError(
            f"checkpoint {directory} does not match the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
