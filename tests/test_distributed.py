"""Data-parallel training on 2 Ray workers (gloo, CPU) equals one process: DPO, a reward model,
GRPO, PPO with its critic, HPT and Clip-Cov leave the same parameters (a critic's too) and log
the same metrics; a 2-worker checkpoint resumes on 1 and on 2 workers and continues exactly; a
killed worker ends the run with one line naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
import yaml
from safetensors.torch import load_file

from alignlib.config import load_config
from alignlib.trainer import distributed
from alignlib.trainer.loop import Trainer

PAIRS = [
    {"prompt": f"What is {a} + {b}?", "chosen": f"{a + b}", "rejected": f"{a + b + 1} or so"}
    for a, b in [(2, 3), (4, 4), (7, 1), (6, 3), (5, 5), (1, 8), (3, 3), (9, 2)]
]
PROMPTS = [
    {"prompt": f"What is {a} + {b}?", "answer": str(a + b), "solution": f"It is {a + b}"}
    for a, b in [(2, 3), (4, 4), (7, 1), (6, 3)] * 2
]
ONLINE = {
    "rollout": {"n": 4, "max_new_tokens": 5},
    "online": {
        "prompts_per_step": 2,
        "micro_batch_size": 3,
        "mini_batches": 2,
        "rewards": [{"name": "online_rewards:digit_share"}],
    },
}
# fp32 end to end, the bound. The gradient's summation order differs (rank partial
# sums, then the all-reduce) and AdamW magnifies that rounding on near-zero coordinates, so
# this is a bound on rounding; exactness itself is proven in float64 (test_distributed_exact).
EXACT = 1e-6
METRIC_ABS = 1e-6
"""A logged mean's fp32 rounding under another summation order: a PPO loss over whitened
advantages (mean 0) is a small difference of O(1) terms, so its rounding is absolute."""


def write(tmp: Path, name: str, workers: int, method: str, **sections: Any) -> Path:
    online = method not in ("dpo", "sft", "reward_model")
    data = tmp / f"{'prompts' if online else 'pairs'}.jsonl"  # shared: resume checks data.path
    data.write_text("".join(json.dumps(r) + "\n" for r in (PROMPTS if online else PAIRS)))
    cfg: dict[str, Any] = {
        "output_dir": str(tmp / name),
        "model": {"name_or_path": "tiny:llama"},
        "data": {"path": str(data), "shuffle": True},
        "algorithm": {"name": method},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0, "schedule": "constant"},
        "train": {"batch_size": 4, "micro_batch_size": 1, "max_steps": 2, "seed": 0},
        "logging": {"progress": False, "tensorboard": False, "plot": False},
        "distributed": {"num_workers": workers, "num_cpus_per_worker": 0.5, "timeout_s": 120},
        **(ONLINE if online else {}),
    }
    for key, values in sections.items():
        cfg[key] = {**cfg.get(key, {}), **values}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


def assert_same_training(one: Any, two: Any) -> None:
    folders = ["final"] + (["critic"] if (one.output_dir / "critic").is_dir() else [])
    for folder in folders:  # the policy, and a critic trained beside it
        a, b = (load_file(run.output_dir / folder / "model.safetensors") for run in (one, two))
        assert a.keys() == b.keys()
        for key in a:
            moved = (a[key] - b[key]).norm() / a[key].norm().clamp_min(1e-12)
            assert moved < EXACT, f"{folder} {key}: relative difference {moved:.2e}"
    for want, got in zip(one.history, two.history, strict=True):
        for key, value in want.items():
            if key.startswith("time/") or "per_s" in key:
                continue
            assert got[key] == pytest.approx(value, rel=1e-5, abs=METRIC_ABS), (key, got["step"])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Any:
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize(
    ("algorithm", "params"),
    [
        ("dpo", {}),
        ("reward_model", {}),
        ("grpo", {}),
        ("ppo_gae", {}),
        ("hpt", {"max_response_length": 5}),
        ("clip_cov", {"ratio": 0.2}),
    ],
)
def test_two_workers_train_exactly_like_one_process(
    tmp_path: Path, algorithm: str, params: dict[str, Any]
) -> None:
    extra = {"algorithm": {"name": algorithm, "params": params}}
    one = Trainer(load_config(write(tmp_path, "one", 0, algorithm, **extra))).train()
    two = Trainer(load_config(write(tmp_path, "two", 2, algorithm, **extra))).train()
    assert two.steps == one.steps == 2
    assert_same_training(one, two)
    if algorithm == "clip_cov":  # the same tokens were dropped, over the whole mini-batch
        dropped = [k for k in one.history[-1] if "cov_dropped" in k]
        assert dropped and all(two.history[-1][k] == one.history[-1][k] for k in dropped)


def test_multi_turn_episodes_train_on_two_workers_like_one_process(tmp_path: Path) -> None:
    """Rank 0 plays the episodes; every rank gets their loss masks with the rows."""
    environment = {"name": "online_environments:ScoreLastTurn", "max_turn_tokens": 3}
    extra = {
        "rollout": {"max_new_tokens": 9},
        "online": {"environment": environment, "rewards": [{"name": "environment"}]},
    }
    one = Trainer(load_config(write(tmp_path, "one", 0, "grpo", **extra))).train()
    two = Trainer(load_config(write(tmp_path, "two", 2, "grpo", **extra))).train()
    assert all(h["rollout/turns"] > 1.5 for h in one.history)
    assert_same_training(one, two)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_two_worker_checkpoint_resumes_on_any_number_of_workers(
    tmp_path: Path, workers: int
) -> None:
    extra = {"train": {"max_steps": 4}, "checkpoint": {"every": 2}}
    full = Trainer(load_config(write(tmp_path, "full", 2, "dpo", **extra))).train()
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    copy_all_but_the_last_checkpoint(full.output_dir, resumed_dir)
    path = write(tmp_path, "resumed", workers if workers > 1 else 0, "dpo", **extra)
    resumed = Trainer(load_config(path, ["checkpoint.resume=true"])).train()
    for want, got in zip(full.history[2:], resumed.history, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6), got["step"]
    a, b = weights(full.output_dir), weights(resumed.output_dir)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_a_killed_worker_ends_the_run_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = distributed.run_distributed

    def kill_rank_one_once_started(config: Any, train_rank: Any, on_started: Any = None) -> Any:
        kill = lambda workers: ray.kill(workers[1], no_restart=True)  # noqa: E731
        return real(config, train_rank, on_started=kill)

    monkeypatch.setattr(distributed, "run_distributed", kill_rank_one_once_started)
    path = write(tmp_path, "killed", 2, "dpo", train={"max_steps": 50})
    with pytest.raises(distributed.DistributedError, match=r"training worker 1 \(pid \d+\) died"):
        Trainer(load_config(path)).train()


def copy_all_but_the_last_checkpoint(run_dir: Path, folder: Path) -> None:
    """``run_dir``'s checkpoints without its last step's, into ``folder``: a run stopped after
    step 3 of 4, so resuming trains steps 3 and 4."""
    shutil.copytree(run_dir / "checkpoints", folder / "checkpoints")
    shutil.rmtree(max((folder / "checkpoints").glob("step-*")))


def resumed_on_one_fsdp2_worker(tmp: Path, run: Any, algorithm: str, extra: dict[str, Any]) -> Any:
    """A run on one FSDP2 worker resumed from a copy of ``run``'s checkpoints but the last."""
    folder = tmp / "resumed"
    folder.mkdir()
    copy_all_but_the_last_checkpoint(run.output_dir, folder)
    path = write(tmp, "resumed", 1, algorithm, **extra, distributed={"strategy": "fsdp2"})
    return Trainer(load_config(path, ["checkpoint.resume=true"])).train()


MOVING_REFERENCE = {"reference": "live", "reference_sync": {"every": 1, "alpha": 0.5}}


@pytest.mark.parametrize("reference", ["fixed", "moving"])
def test_fsdp2_shards_train_like_one_process_and_resume_on_fewer(
    tmp_path: Path, reference: str
) -> None:
    """DPO's reference precomputed, or moving toward the policy (TR-DPO) as shards that are
    gathered into each checkpoint and resharded on resume."""
    train = {"max_steps": 4, **(MOVING_REFERENCE if reference == "moving" else {})}
    extra = {"train": train, "checkpoint": {"every": 2}}
    fsdp2 = {"strategy": "fsdp2", "num_workers": 2}
    one = Trainer(load_config(write(tmp_path, "one", 0, "dpo", **extra))).train()
    path = write(tmp_path, "sharded", 2, "dpo", **extra, distributed=fsdp2)
    sharded = Trainer(load_config(path)).train()
    assert_same_training(one, sharded)
    # Its checkpoint is one full Hugging Face folder: it resumes on one FSDP2 worker ...
    resumed = resumed_on_one_fsdp2_worker(tmp_path, sharded, "dpo", extra)
    for want, got in zip(one.history[2:], resumed.history, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), got["step"]
    # ... but not under another strategy, whose optimizer state is keyed differently.
    path = write(tmp_path, "resumed", 0, "dpo", **extra)
    with pytest.raises(ValueError, match=r"distributed.strategy fsdp2 → ddp"):
        Trainer(load_config(path, ["checkpoint.resume=true"])).train()


def test_fsdp2_trains_online_with_a_rollout_worker_like_one_process(tmp_path: Path) -> None:
    """The sharded policy's full weights are gathered for the Ray rollout worker every step."""
    worker = {"rollout": {"n": 4, "max_new_tokens": 5, "num_workers": 1, "timeout_s": 120}}
    one = Trainer(load_config(write(tmp_path, "one", 0, "grpo", **worker))).train()
    fsdp2 = {"strategy": "fsdp2", "num_workers": 2}
    path = write(tmp_path, "sharded", 2, "grpo", **worker, distributed=fsdp2)
    assert_same_training(one, Trainer(load_config(path)).train())


def test_fsdp2_shards_a_critic_like_the_policy_and_resumes_it(tmp_path: Path) -> None:
    """PPO with a critic: both models sharded train like one process; the sharded checkpoint
    (the critic gathered into critic/) resumes on one FSDP2 worker and continues exactly."""
    extra = {
        "rollout": {"n": 4, "max_new_tokens": 5, "num_workers": 1, "timeout_s": 120},
        "train": {"max_steps": 4},
        "checkpoint": {"every": 2},
    }
    one = Trainer(load_config(write(tmp_path, "one", 0, "ppo_gae", **extra))).train()
    fsdp2 = {"strategy": "fsdp2"}
    path = write(tmp_path, "sharded", 2, "ppo_gae", **extra, distributed=fsdp2)
    sharded = Trainer(load_config(path)).train()
    assert_same_training(one, sharded)
    resumed = resumed_on_one_fsdp2_worker(tmp_path, sharded, "ppo_gae", extra)
    for want, got in zip(one.history[2:], resumed.history, strict=True):
        for key in ("loss", "critic/value_loss", "critic/values"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=METRIC_ABS), (
                key,
                got["step"],
            )


def test_fsdp2_refuses_what_it_cannot_shard_yet(tmp_path: Path) -> None:
    path = write(tmp_path, "online", 2, "grpo", distributed={"strategy": "fsdp2"})
    with pytest.raises(ValueError, match="a rollout engine cannot share a sharded policy"):
        Trainer(load_config(path))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_lora_with_dropout_trains_exactly_like_one_process(tmp_path: Path, strategy: str) -> None:
    """LoRA's dropout (0.05 by default) draws its masks per micro-batch, not per rank, so any
    number of workers trains like one process; FSDP2 also sends the rollout worker the merged
    weights of its gathered shards and saves the adapter alone."""
    extra: dict[str, Any] = {"lora": {"enabled": True, "r": 4}}
    method = "dpo"
    if strategy == "fsdp2":
        method = "grpo"
        extra["rollout"] = {"n": 4, "max_new_tokens": 5, "num_workers": 1, "timeout_s": 120}
    one = Trainer(load_config(write(tmp_path, "one", 0, method, **extra))).train()
    dist_cfg = {"strategy": strategy}
    two = Trainer(load_config(write(tmp_path, "two", 2, method, **extra, distributed=dist_cfg)))
    two_run = two.train()
    a = load_file(one.output_dir / "final" / "adapter_model.safetensors")
    b = load_file(two_run.output_dir / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(t.abs().max() > 0 for k, t in a.items() if "lora_B" in k)
    # B starts at zero, so after two AdamW steps it is made of ±lr-sized, sign-driven updates
    # whose fp32 rounding shows at ~1e-6 relative; a wrong mask or gradient moves it by ~1.
    for key in a:
        moved = (a[key] - b[key]).norm() / a[key].norm().clamp_min(1e-12)
        assert moved < 10 * EXACT, f"{key}: relative difference {moved:.2e}"
    for want, got in zip(one.history, two_run.history, strict=True):
        # GRPO's loss sums advantage-weighted terms that nearly cancel (|loss| ~1e-3 of terms of
        # ~1e-1), so float32 rounding of the merged rollout weights shows as ~1e-8 absolute.
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=METRIC_ABS), got["step"]


def test_fsdp2_trains_a_packed_lora_reward_model_like_one_padded_process(tmp_path: Path) -> None:
    """A reward model's shards (LoRA on the decoder, the score head trained whole) packed with
    the block-diagonal mask train like one padded process, and merged/ (gathered from the
    shards) is the same sequence classifier the one process merges."""
    from transformers import AutoModelForSequenceClassification

    lora = {"enabled": True, "r": 4, "dropout": 0.0, "save_merged": True}
    extra: dict[str, Any] = {"algorithm": {"name": "reward_model"}, "lora": lora}
    one = Trainer(load_config(write(tmp_path, "one", 0, "reward_model", **extra))).train()
    fsdp2 = {"strategy": "fsdp2"}
    packed = {**extra, "train": {"packing": True, "max_tokens_per_micro_batch": 48}}
    path = write(tmp_path, "two", 2, "reward_model", **packed, distributed=fsdp2)
    two = Trainer(load_config(path)).train()
    for want, got in zip(one.history, two.history, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), got["step"]
    a, b = (load_file(run.output_dir / "merged" / "model.safetensors") for run in (one, two))
    assert a.keys() == b.keys() and "score.weight" in a
    for key in a:
        moved = (a[key] - b[key]).norm() / a[key].norm().clamp_min(1e-12)
        assert moved < 10 * EXACT, f"{key}: relative difference {moved:.2e}"
    merged = AutoModelForSequenceClassification.from_pretrained(two.output_dir / "merged")
    assert torch.equal(merged.score.weight.detach(), b["score.weight"])


def test_fsdp2_online_keeps_a_sharded_kl_reference_and_evaluates_through_the_engine(
    tmp_path: Path,
) -> None:
    """GRPO's KL term reads a frozen reference sharded like the policy; in-loop eval runs on
    rank 0 through the rollout worker that holds the gathered weights."""
    extra = {
        "algorithm": {"name": "grpo", "params": {"kl_coef": 0.5}},
        "rollout": {"n": 4, "max_new_tokens": 5, "num_workers": 1, "timeout_s": 120},
        "eval": {"every": 2, "benchmarks": ["math500"], "limit": 2, "max_new_tokens": 3},
    }
    one = Trainer(load_config(write(tmp_path, "one", 0, "grpo", **extra))).train()
    fsdp2 = {"strategy": "fsdp2"}
    two = Trainer(load_config(write(tmp_path, "two", 2, "grpo", **extra, distributed=fsdp2)))
    sharded = two.train()
    assert_same_training(one, sharded)
    assert sharded.history[-1]["kl/kl"] > 0 and "eval/math500/pass@1" in sharded.history[-1]


def test_inpo_iterations_train_on_two_workers_like_one_process(tmp_path: Path) -> None:
    """Rank 0 samples and ranks each iteration's pairs; every rank caches and trains on them."""
    extra = {
        "data": {"path": "builtin:gsm8k_prompts", "limit": 4},
        "algorithm": {"name": "inpo"},
        "train": {"max_steps": None, "epochs": 1, "batch_size": 2},
        "iterative": {
            "iterations": 2,
            "samples_per_prompt": 3,
            "max_new_tokens": 6,
            "oracle": "oracles_for_tests:shortest",
        },
    }
    one = Trainer(load_config(write(tmp_path, "one", 0, "dpo", **extra))).train()
    two = Trainer(load_config(write(tmp_path, "two", 2, "dpo", **extra))).train()
    assert two.steps == one.steps == 4
    assert_same_training(one, two)


def test_rollout_workers_colocated_with_the_training_workers_change_nothing(
    tmp_path: Path,
) -> None:
    """`distributed.placement: colocate` puts the two rollout workers in the training workers'
    reservations; where they run does not change what is trained."""
    worker = {"rollout": {"n": 4, "max_new_tokens": 5, "num_workers": 2, "timeout_s": 120}}
    one = Trainer(load_config(write(tmp_path, "one", 0, "grpo", **worker))).train()
    colocate = {"placement": "colocate"}
    path = write(tmp_path, "two", 2, "grpo", **worker, distributed=colocate)
    assert_same_training(one, Trainer(load_config(path)).train())
