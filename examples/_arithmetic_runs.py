"""Shared by the paper-reproduction examples: short online runs on the builtin arithmetic task.

The policy is the bundled SmolLM2-135M-Instruct with a LoRA adapter; prompts are
`builtin:arithmetic_prompts` (one-step sums and differences with a worked demonstration), and
held-out accuracy is greedy on `builtin:arithmetic_heldout` (names and objects training never
uses). `--quick` swaps in `tiny:llama` (random weights) and two steps: it checks the script's
plumbing in seconds, not the claim.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignlib import Trainer
from alignlib.config import RunConfig, merge_sections

SMOLLM = "bundled:smollm2-135m-instruct"


@dataclass(frozen=True)
class Scale:
    """How big every run of a script is (full runs and `--quick` differ only here)."""

    model: str
    steps: int
    prompts_per_step: int
    n: int
    max_new_tokens: int
    heldout_size: int | None = None
    """Held-out prompts scored (greedy) before training, every `heldout_every` steps and at the
    end; None: no held-out evaluation."""
    heldout_every: int | None = None


def arithmetic_config(
    output_dir: Path, scale: Scale, algorithm: dict[str, Any], seed: int, **sections: Any
) -> RunConfig:
    """An online run on the arithmetic prompts at ``scale``; ``sections`` override any part."""
    base = {
        "output_dir": str(output_dir),
        "model": {"name_or_path": scale.model},
        "lora": {"enabled": True, "r": 16, "alpha": 32, "dropout": 0.0},
        "data": {"path": "builtin:arithmetic_prompts"},
        "algorithm": algorithm,
        "optim": {"lr": 3e-4, "warmup_ratio": 0.0, "schedule": "constant", "grad_clip": 1.0},
        "train": {"max_steps": scale.steps, "seed": seed},
        "logging": {"progress": False, "report_to": [], "plot": False},
        "rollout": {"n": scale.n, "temperature": 1.0, "max_new_tokens": scale.max_new_tokens},
        "online": {
            "prompts_per_step": scale.prompts_per_step,
            "micro_batch_size": 16,
            "heldout": {
                "data": "builtin:arithmetic_heldout" if scale.heldout_size else None,
                "size": scale.heldout_size,
                "every": scale.heldout_every,
            },
        },
    }
    return RunConfig.model_validate(merge_sections(base, sections))


@dataclass
class Run:
    """One finished run: its per-step metrics and the trained policy module."""

    history: list[dict[str, float]]
    model: torch.nn.Module
    seconds: float


def train(config: RunConfig, start_from: torch.nn.Module | None = None) -> Run:
    """Train ``config``; with ``start_from`` the policy first takes that module's weights (the
    same architecture and LoRA layout), so a run can continue another's final policy."""
    began = time.perf_counter()
    trainer = Trainer(config)
    if start_from is not None:
        trainer.model.load_state_dict(start_from.state_dict())
    result = trainer.train()
    return Run(result.history, trainer.model, time.perf_counter() - began)


def series(history: list[dict[str, float]], key: str, offset: int = 0) -> dict[str, list]:
    """{step, value} lists of the steps that logged ``key`` (steps shifted by ``offset``)."""
    rows = [(int(h["step"]) + offset, float(h[key])) for h in history if key in h]
    return {"step": [s for s, _ in rows], "value": [v for _, v in rows]}


def write_results(out: Path, results: dict[str, Any]) -> Path:
    """results.json in ``out`` (created): floats rounded to 4 places, number lists on one line."""

    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 4)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return value

    text = json.dumps(rounded(results), indent=1)
    # Lists of numbers on one line each: a series reads as a row, not a column.
    text = re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: f"[{' '.join(m[1].split())}]", text)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(text + "\n")
    return path


@contextmanager
def saved_figure(path: Path, *grid: int, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """(figure, axes) of ``plt.subplots(*grid, **subplots)`` on the headless backend; laid out
    and written to ``path`` (120 dpi) when the block ends, closed either way."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*grid, **subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
