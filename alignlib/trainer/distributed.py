"""Data-parallel training on Ray: ``distributed.num_workers`` actors, each one rank of a private
torch.distributed group (gloo on CPU, NCCL on GPU), each running the same loop (loop.run) on the
same source. See alignlib/trainer/world.py for why the result equals one process's exactly.

Why Ray actors holding a process group rather than Ray Train's TorchTrainer: the rollout pool
(rollout/ray_workers.py) is already Ray actors with per-call timeouts and replacement, and the
training ranks join the same cluster the same way; the loop, its checkpoints (one HF folder that
resumes on any number of workers) and its one-line errors stay alignlib's own, where
TorchTrainer would own the loop's entry, checkpoint storage and failure reporting.

The driver process only validates the config, starts the actors and waits: a worker that dies
ends the run with one line naming it; one stuck in a collective (because another died) is ended
by the group's timeout (``distributed.timeout_s``).
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import ray
import torch
import torch.distributed as dist
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from alignlib.config.schema import RunConfig
from alignlib.rollout.ray_cluster import ensure_ray
from alignlib.trainer.world import World

TrainRank = Callable[[RunConfig, World], dict[str, Any]]
"""What each worker runs: train as one rank, return {steps, final_metrics, history}."""


class DistributedError(OSError):
    """A training worker died or never started: an environment failure the user acts on, so
    (like other OS errors) the CLI prints it as one line naming the worker."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


class TrainWorker:
    """One rank: joins the group, builds the policy on its device, runs the loop."""

    def __init__(self, rank: int, size: int, rollout_scheduling: tuple[Any, ...] = ()) -> None:
        self.rank, self.size = rank, size
        self.rollout_scheduling = rollout_scheduling if rank == 0 else ()

    def endpoint(self) -> tuple[str, int, int, str]:
        """(host, free port, pid, Ray node id): rank 0's host and port are the group's
        rendezvous."""
        node = ray.get_runtime_context().get_node_id()
        return ray.util.get_node_ip_address(), _free_port(), os.getpid(), node

    def run(
        self,
        train_rank: TrainRank,
        config_json: str,
        master: tuple[str, int],
        threads: int,
        paths: list[str],
    ) -> dict[str, Any]:
        # The driver's import path: a `module:function` reward next to the user's config
        # imports here too (on other nodes it must be installed there).
        sys.path[:0] = [p for p in paths if p not in sys.path]
        torch.set_num_threads(threads)
        config = RunConfig.model_validate_json(config_json)
        timeout = timedelta(seconds=config.distributed.timeout_s)
        store = dist.TCPStore(
            master[0], master[1], self.size, is_master=self.rank == 0, timeout=timeout
        )
        backend = "nccl" if config.distributed.use_gpu else "gloo"
        dist.init_process_group(
            backend, store=store, rank=self.rank, world_size=self.size, timeout=timeout
        )
        try:
            sharded = config.distributed.strategy == "fsdp2"
            world = World(self.rank, self.size, sharded, self.rollout_scheduling)
            return train_rank(config, world)
        finally:
            dist.destroy_process_group()


def run_distributed(
    config: RunConfig,
    train_rank: TrainRank,
    on_started: Callable[[list[Any]], None] | None = None,
) -> dict[str, Any]:
    """Start the workers, each calling ``train_rank(config, world)`` (a module-level function:
    Ray sends it by reference), wait for them, return rank 0's result with the Ray node of each
    rank under "nodes". ``on_started(workers)`` runs once every worker has started (tests
    inject faults)."""
    spec = config.distributed
    ensure_ray(spec.ray_address, spec.timeout_s, key="distributed.ray_address")
    # Workers run in Ray's own working folder: give them the run folder as an absolute path.
    config = config.model_copy(update={"output_dir": str(Path(config.output_dir).resolve())})
    layout = Layout.of(config)
    group = layout.reserve(spec.timeout_s)
    actor = ray.remote(TrainWorker)
    resources = {"num_cpus": spec.num_cpus_per_worker, "num_gpus": layout.train_gpus}
    rollouts = tuple(layout.rollout_scheduling(group))
    workers = [
        actor.options(
            **resources, scheduling_strategy=in_bundle(group, rank), max_restarts=0
        ).remote(rank, spec.num_workers, rollouts)
        for rank in range(spec.num_workers)
    ]
    try:
        endpoints = _wait(workers, [w.endpoint.remote() for w in workers], spec.timeout_s)
        if on_started is not None:
            on_started(workers)
        master = endpoints[0][:2]
        threads = max(1, int(spec.num_cpus_per_worker))
        paths = [p for p in sys.path if p and Path(p).is_dir()]
        runs = [
            w.run.remote(train_rank, config.model_dump_json(), master, threads, paths)
            for w in workers
        ]
        results = _wait(workers, runs, None, [e[2] for e in endpoints])
        return results[0] | {"nodes": [e[3] for e in endpoints]}
    finally:
        for worker in workers:
            ray.kill(worker, no_restart=True)
        remove_placement_group(group)


@dataclass(frozen=True)
class Layout:
    """The run's Ray placement group (`distributed.placement`): one bundle per training worker,
    spread over the nodes; rollout workers in their own bundles (split) or in the training
    workers' (colocate: rollout worker j with training worker j mod N, on its node and GPU)."""

    workers: int
    train_cpus: float
    gpu: bool
    rollouts: int
    rollout_cpus: float
    rollout_gpus: float
    colocate: bool

    @classmethod
    def of(cls, config: RunConfig) -> Layout:
        spec, rollout = config.distributed, config.rollout
        count = rollout.num_workers if rollout is not None else 0
        cpus = rollout.worker_num_cpus if rollout is not None else 0.0
        gpus = rollout.worker_num_gpus if rollout is not None else 0.0
        layout = cls(
            spec.num_workers,
            spec.num_cpus_per_worker,
            spec.use_gpu,
            count,
            cpus,
            gpus,
            spec.placement == "colocate",
        )
        if layout.colocate and spec.use_gpu and layout.train_gpus <= 0:
            raise ValueError(
                f"distributed.placement: colocate puts {layout.per_bundle} rollout worker(s) "
                f"of rollout.worker_num_gpus {gpus:g} on each training GPU, leaving none for "
                "training; lower rollout.worker_num_gpus (e.g. 0.3) or use placement: split"
            )
        return layout

    @property
    def per_bundle(self) -> int:
        """Rollout workers sharing one training worker's bundle (colocate)."""
        return -(-self.rollouts // self.workers) if self.colocate else 0

    @property
    def train_gpus(self) -> float:
        """A training worker's GPU share: what its colocated rollout workers leave."""
        return 1.0 - self.per_bundle * self.rollout_gpus if self.gpu else 0.0

    def bundles(self) -> list[dict[str, float]]:
        train = {"CPU": self.train_cpus + self.per_bundle * self.rollout_cpus}
        train |= {"GPU": 1.0} if self.gpu else {}
        rollout = {"CPU": self.rollout_cpus} | (
            {"GPU": self.rollout_gpus} if self.rollout_gpus else {}
        )
        return [train] * self.workers + ([] if self.colocate else [rollout] * self.rollouts)

    def reserve(self, timeout_s: float) -> PlacementGroup:
        group = placement_group(self.bundles(), strategy="SPREAD")
        try:
            ray.get(group.ready(), timeout=timeout_s)
        except GetTimeoutError:
            remove_placement_group(group)
            raise DistributedError(
                f"distributed: the cluster cannot reserve {self.bundles()} within "
                f"{timeout_s:g} s (distributed.timeout_s); check `ray status` for free CPUs/GPUs, "
                "or lower distributed.num_workers / num_cpus_per_worker / rollout.num_workers"
            ) from None
        return group

    def rollout_bundles(self) -> list[int]:
        """The bundle of each rollout worker."""
        if self.colocate:
            return [j % self.workers for j in range(self.rollouts)]
        return [self.workers + j for j in range(self.rollouts)]

    def rollout_scheduling(self, group: PlacementGroup) -> list[Any]:
        return [in_bundle(group, index) for index in self.rollout_bundles()]


def in_bundle(group: PlacementGroup, index: int) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)


def _wait(
    workers: list[Any],
    refs: list[Any],
    timeout_s: float | None,
    pids: list[int] | None = None,
) -> list[Any]:
    """Every ref's value; a worker's death or error ends the wait at once, naming the worker."""
    pending = list(refs)
    began = time.monotonic()
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=5.0)
        for ref in done:
            try:
                _check(ref, refs.index(ref), pids)
            except (ValueError, DistributedError) as err:
                if not PEER_FAILED.search(str(err)) or not pending:
                    raise
                raise _root_cause(err, refs, pending, pids) from None
        if timeout_s is not None and time.monotonic() - began > timeout_s and pending:
            rank = refs.index(pending[0])
            raise DistributedError(
                f"distributed: training worker {rank} did not start within {timeout_s:g} s "
                "(distributed.timeout_s); check the cluster has "
                f"{len(workers)} × the CPUs/GPUs asked for (distributed.num_cpus_per_worker, "
                "use_gpu)"
            )
    return [ray.get(ref) for ref in refs]


PEER_FAILED = re.compile(r"closed by peer|reset by peer|remote process exited|broken pipe", re.I)
"""A rank's collective failing because another rank failed first."""


def _root_cause(
    first: Exception, refs: list[Any], pending: list[Any], pids: list[int] | None
) -> Exception:
    """The error of the rank that failed first, when the one seen is only its peer's collective
    breaking (waits briefly for the others to report)."""
    done, _ = ray.wait(pending, num_returns=len(pending), timeout=10.0)
    for ref in done:
        try:
            _check(ref, refs.index(ref), pids)
        except (ValueError, DistributedError) as err:
            if not PEER_FAILED.search(str(err)):
                return err
    return first


def _check(ref: Any, rank: int, pids: list[int] | None) -> None:
    """Raise one line for a dead worker; a user error inside a worker is re-raised as is."""
    try:
        ray.get(ref, timeout=0)
    except RayTaskError as err:
        cause = err.as_instanceof_cause()
        if isinstance(cause, (ValueError, OSError)):  # the user's line, from inside the worker
            last = str(cause).strip().splitlines()[-1]
            raise ValueError(re.sub(r"^[\w.]+(Error|Exception): ", "", last)) from None
        first = str(err).strip().splitlines()[-1]
        raise DistributedError(f"distributed: training worker {rank} failed: {first}") from None
    except (RayActorError, GetTimeoutError) as err:
        pid = f" (pid {pids[rank]})" if pids else ""
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise DistributedError(
            f"distributed: training worker {rank}{pid} died ({reason}); the run stopped: "
            "rerun with checkpoint.resume: true to continue from the last checkpoint"
        ) from None
