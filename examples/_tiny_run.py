"""Shared by the reward examples: two online GRPO steps of a tiny random model with one reward.

Offline, on CPU, in seconds: the model is `tiny:llama` (random weights, a tokenizer trained
in-process), so the rewards stay near zero; the point is that the reward file is used as is.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from alignlib import Trainer
from alignlib.config import RunConfig


def train_with(
    reward: dict[str, Any], rows: list[dict[str, Any]], steps: int = 2, **online: Any
) -> dict:
    """Train `steps` online steps with `reward` (an `online.rewards` entry) and further
    `online:` keys (e.g. environment); final metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "prompts.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        config = RunConfig.model_validate(
            {
                "output_dir": str(Path(tmp) / "run"),
                "model": {"name_or_path": "tiny:llama"},
                "data": {"path": str(data)},
                "algorithm": {"name": "grpo"},
                "optim": {"lr": 1e-2, "warmup_ratio": 0.0, "schedule": "constant"},
                "train": {"max_steps": steps, "seed": 0},
                "logging": {"progress": False, "tensorboard": False, "plot": False},
                "rollout": {"n": 4, "max_new_tokens": 8},
                "online": {"prompts_per_step": 2, "rewards": [reward], **online},
            }
        )
        return Trainer(config).train().final_metrics
