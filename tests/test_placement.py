"""`distributed.placement`: the Ray placement group's bundles for training and rollout workers
(split: their own; colocate: rollout worker j in training worker j mod N's bundle, on its GPU)."""

from __future__ import annotations

from typing import Any

import pytest

from alignlib.config import RunConfig
from alignlib.trainer.distributed import Layout


def config(placement: str, rollouts: int, gpus: float = 0.0, use_gpu: bool = False) -> RunConfig:
    data: dict[str, Any] = {
        "model": {"name_or_path": "tiny:llama"},
        "algorithm": {"name": "grpo"},
        "distributed": {
            "num_workers": 2,
            "num_cpus_per_worker": 1.0,
            "placement": placement,
            "use_gpu": use_gpu,
        },
        "rollout": {"num_workers": rollouts, "worker_num_cpus": 0.5, "worker_num_gpus": gpus},
    }
    return RunConfig.model_validate(data)


def test_split_reserves_a_bundle_per_worker_of_each_kind() -> None:
    layout = Layout.of(config("split", 3, gpus=1.0, use_gpu=True))
    assert layout.bundles() == [{"CPU": 1.0, "GPU": 1.0}] * 2 + [{"CPU": 0.5, "GPU": 1.0}] * 3
    assert layout.rollout_bundles() == [2, 3, 4]
    assert layout.train_gpus == 1.0


def test_colocate_shares_the_training_workers_bundles_and_gpus() -> None:
    layout = Layout.of(config("colocate", 3, gpus=0.25, use_gpu=True))
    # two rollout workers may share bundle 0: each bundle has room for ceil(3/2) of them
    assert layout.bundles() == [{"CPU": 2.0, "GPU": 1.0}] * 2
    assert layout.rollout_bundles() == [0, 1, 0]
    assert layout.train_gpus == pytest.approx(0.5)
    on_cpu = Layout.of(config("colocate", 2))
    assert on_cpu.bundles() == [{"CPU": 1.5}] * 2 and on_cpu.train_gpus == 0.0


def test_colocate_leaving_no_gpu_for_training_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"leaving none for training; lower rollout.worker_num"):
        Layout.of(config("colocate", 2, gpus=1.0, use_gpu=True))
