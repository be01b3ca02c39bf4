"""Synchronous vs one-step-off rollouts (`online.max_staleness` 0 vs 1) on CPU: two Ray rollout
workers (transformers engine) and a GRPO trainer with TIS rollout correction, tiny model, the
same prompts and step budget. Prints median step time and the final rewards of each.

    python benchmarks/async_vs_sync.py --steps 12
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def run(tmp: Path, k: int, steps: int, model: str) -> list[dict[str, float]]:
    from test_online import PROMPTS  # the tiny task of the test suite (digit-share reward)

    from alignlib.config import load_config
    from alignlib.trainer.loop import Trainer

    data = tmp / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    cfg = {
        "output_dir": str(tmp / f"k{k}"),
        "model": {"name_or_path": model},
        "data": {"path": str(data)},
        "algorithm": {"name": "grpo"},
        "optim": {"lr": 1e-2, "warmup_ratio": 0.0, "schedule": "constant"},
        "train": {"max_steps": steps, "seed": 0},
        "logging": {"progress": False, "tensorboard": False, "plot": False},
        "rollout": {"n": 8, "max_new_tokens": 16, "num_workers": 2, "worker_num_cpus": 0.5},
        "online": {
            "prompts_per_step": 4,
            "micro_batch_size": 16,
            "max_staleness": k,
            "rollout_correction": {"mode": "tis", "cap": 2.0},
            "rewards": [{"name": "online_rewards:digit_share"}],
        },
    }
    path = tmp / f"k{k}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Trainer(load_config(path)).train().history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--model", default="tiny:llama")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for k in (0, 1):
            history = [h for h in run(Path(tmp), k, args.steps, args.model) if "time/step_s" in h]
            step = statistics.median(h["time/step_s"] for h in history[2:])
            final = statistics.mean(h["rollout/reward_mean"] for h in history[-3:])
            print(f"max_staleness {k}: {step:.3f} s/step (median), final reward {final:.3f}")


if __name__ == "__main__":
    main()
