"""Data-parallel step time: one process vs N Ray workers (CPU, gloo), and on a GPU the FSDP2
step against the plain single-device step (one rank, NCCL, no Ray: the GPU machine has none).

    python benchmarks/data_parallel.py workers --model tiny:llama --steps 8      # 1 vs 2 workers
    python benchmarks/data_parallel.py fsdp2 --model /tmp/qwen05b --steps 8      # on a GPU

Same DPO run, model, data and global batch on each side; prints the median step time after a
warm-up step (the one process uses all N cores as threads; each of the N workers one core)."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml


def config(tmp: Path, name: str, model: str, steps: int, **sections: Any) -> Path:
    from alignlib.data import load_rows

    data = tmp / "pairs.jsonl"
    rows = load_rows("builtin:gsm8k_short_pairs", limit=64)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg: dict[str, Any] = {
        "output_dir": str(tmp / name),
        "model": {"name_or_path": model, "chat_template": False},
        "data": {"path": str(data), "max_prompt_length": 128, "max_completion_length": 32},
        "algorithm": {"name": "dpo"},
        "optim": {"lr": 1e-5, "warmup_ratio": 0.0, "schedule": "constant"},
        "train": {"batch_size": 8, "micro_batch_size": 2, "max_steps": steps},
        "logging": {"progress": False, "tensorboard": False, "plot": False},
        **sections,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def median_step(history: list[dict[str, float]]) -> float:
    return statistics.median(h["time/step_s"] for h in history[1:])


def workers(model: str, steps: int, count: int) -> None:
    import ray

    from alignlib.config import load_config
    from alignlib.trainer.loop import Trainer

    ray.init(num_cpus=count, include_dashboard=False)
    with tempfile.TemporaryDirectory() as tmp:
        torch.set_num_threads(count)  # the one process gets every core the workers share
        one = Trainer(load_config(config(Path(tmp), "one", model, steps))).train()
        spec = {"num_workers": count, "num_cpus_per_worker": 1.0}
        many = Trainer(load_config(config(Path(tmp), "n", model, steps, distributed=spec))).train()
    a, b = median_step(one.history), median_step(many.history)
    print(f"{model}: 1 process {a:.3f} s/step, {count} workers {b:.3f} s/step ({a / b:.2f}x)")


def fsdp2(model: str, steps: int) -> None:
    import torch.distributed as dist

    from alignlib.config import load_config
    from alignlib.trainer.loop import Trainer
    from alignlib.trainer.world import World

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, init_method="tcp://127.0.0.1:29511", rank=0, world_size=1)
    with tempfile.TemporaryDirectory() as tmp:
        # plain, FSDP2, plain again: a second plain run shows what order alone does (warm
        # allocator and kernels; on the H200 FSDP2 second came out 1.30x faster than plain first)
        first = Trainer(load_config(config(Path(tmp), "plain", model, steps))).train()
        path = config(Path(tmp), "fsdp2", model, steps, distributed={"strategy": "fsdp2"})
        sharded = Trainer(load_config(path), world=World(0, 1, True)).train()
        again = Trainer(load_config(config(Path(tmp), "again", model, steps))).train()
    a, b, c = (median_step(r.history) for r in (first, sharded, again))
    print(
        f"{model}: single device {a:.3f} s/step, FSDP2 (1 rank) {b:.3f} s/step, single device "
        f"again {c:.3f} s/step (FSDP2 / single: {b / a:.2f}, {b / c:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["workers", "fsdp2"])
    parser.add_argument("--model", default="tiny:llama")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.mode == "workers":
        workers(args.model, args.steps, args.workers)
    else:
        fsdp2(args.model, args.steps)


if __name__ == "__main__":
    main()
