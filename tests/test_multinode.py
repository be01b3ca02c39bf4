"""Multi-node data-parallel training as far as one machine allows (opt-in, `pytest -m slow`):
a two-node Ray cluster (`ray.cluster_utils.Cluster`, each node its own raylet with one CPU),
one training worker on each node, joined through `distributed.ray_address` like
`alignlib train cfg.yaml distributed.ray_address=HEAD:6379` on a real cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster
from test_distributed import assert_same_training, write

from alignlib.config import load_config
from alignlib.trainer.loop import Trainer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture
def two_nodes() -> Any:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_one_worker_per_node_trains_like_one_process(tmp_path: Path, two_nodes: Any) -> None:
    one = Trainer(load_config(write(tmp_path, "one", 0, "dpo"))).train()
    path = write(tmp_path, "two", 2, "dpo")
    trainer = Trainer(load_config(path, [f"distributed.ray_address={two_nodes.address}"]))
    two = trainer.train()
    assert len(set(trainer.worker_nodes)) == 2, "one training worker on each node"
    assert_same_training(one, two)


def test_colocated_rollout_workers_run_on_their_training_workers_nodes(
    tmp_path: Path, two_nodes: Any
) -> None:
    """Each node has one CPU: a training worker (0.5) and a rollout worker (0.5) per node."""
    from ray._private import state

    worker = {"rollout": {"n": 4, "max_new_tokens": 5, "num_workers": 2, "timeout_s": 120}}
    place = {"placement": "colocate", "ray_address": two_nodes.address}
    trainer = Trainer(load_config(write(tmp_path, "two", 2, "grpo", **worker, distributed=place)))
    assert trainer.train().steps == 2
    nodes: dict[str, list[str]] = {}
    for actor in state.actors().values():
        nodes.setdefault(actor["ActorClassName"], []).append(actor["Address"]["NodeID"])
    assert sorted(nodes["TrainWorker"]) == sorted(nodes["_RolloutWorker"])
    assert len(set(nodes["TrainWorker"])) == 2
