"""How new policy weights travel from the trainer to rollout workers in other processes.

Two transports sit behind `RayRolloutPool.update_weights`, chosen once when the pool is built:

- `ObjectStoreTransport`: one `ray.put` of CPU copies, read by every worker. Works anywhere
  (CPU, multi-node, mixed devices); the cost is a device→host copy plus one host copy per node.
- `BroadcastTransport`: the trainer (rank 0) and the workers (ranks 1..N) form a
  `torch.distributed` group of their own, and weights are broadcast in flat per-dtype buckets.
  With NCCL, GPU tensors go GPU→GPU without touching host memory (the path verl and OpenRLHF use
  for separate rollout GPUs); with gloo the same code runs on CPU, which is how it is tested here.

The group is built from its own `TCPStore` rather than `init_process_group`, so it never touches
the default process group a user's training script (DDP, FSDP) may own. A group has a fixed set
of members, so replacing a dead worker rebuilds the whole group and re-sends the latest weights.
"""

from __future__ import annotations

import datetime
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
import torch
import torch.distributed as dist

WEIGHT_TRANSPORTS = ("object_store", "broadcast")
DEFAULT_BUCKET_BYTES = 256 * 2**20
"""Broadcast bucket size: few enough collectives for a 7B model, small enough to stage twice."""


@dataclass(frozen=True)
class TensorSpec:
    """What a receiver must know to allocate one tensor before the broadcast starts."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class GroupAddress:
    """Where the group's rendezvous store listens, and how the group communicates."""

    host: str
    port: int
    world_size: int
    backend: str
    timeout_s: float


def open_group(address: GroupAddress, rank: int, store: dist.Store | None = None) -> Any:
    """Join (rank > 0) or host (rank 0, pass the store it created) a standalone process group."""
    timeout = datetime.timedelta(seconds=address.timeout_s)
    if store is None:
        store = dist.TCPStore(
            address.host, address.port, address.world_size, is_master=False, timeout=timeout
        )
    if address.backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, address.world_size, timeout)
    if address.backend == "nccl":
        if not hasattr(dist, "ProcessGroupNCCL"):
            raise RuntimeError("weight broadcast: backend nccl needs a CUDA build of torch.")
        return dist.ProcessGroupNCCL(store, rank, address.world_size)
    raise ValueError(f"weight broadcast: backend {address.backend!r}; use gloo or nccl.")


def plan_buckets(specs: Sequence[TensorSpec], bucket_bytes: int) -> list[list[int]]:
    """Group tensor indices into buckets of one dtype, each at most `bucket_bytes` (a single
    larger tensor gets a bucket of its own). Sender and receivers derive the same plan."""
    buckets: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, spec in enumerate(specs):
        nbytes = math.prod(spec.shape) * spec.dtype.itemsize
        if current and (spec.dtype != specs[current[0]].dtype or size + nbytes > bucket_bytes):
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes
    if current:
        buckets.append(current)
    return buckets


def broadcast_weights(
    group: Any,
    specs: Sequence[TensorSpec],
    tensors: Sequence[torch.Tensor] | None,
    device: torch.device,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> list[tuple[str, torch.Tensor]]:
    """Rank 0 passes `tensors` (matching `specs`) and sends; other ranks pass None and receive.

    Returns `(name, tensor)` pairs; on receivers the tensors are views of the received buckets.
    """
    options = dist.BroadcastOptions()
    options.rootRank = 0
    received: list[tuple[str, torch.Tensor]] = []
    for bucket in plan_buckets(specs, bucket_bytes):
        dtype = specs[bucket[0]].dtype
        if tensors is not None:
            flat = torch.cat([tensors[i].detach().reshape(-1).to(device, dtype) for i in bucket])
        else:
            count = sum(math.prod(specs[i].shape) for i in bucket)
            flat = torch.empty(count, dtype=dtype, device=device)
        group.broadcast([flat], options).wait()
        offset = 0
        for i in bucket:
            count = math.prod(specs[i].shape)
            received.append((specs[i].name, flat[offset : offset + count].view(specs[i].shape)))
            offset += count
    return received


class WeightTransport(ABC):
    """Delivers weights to pool workers; the pool calls these from its own thread only."""

    @abstractmethod
    def connect(self, workers: list[Any]) -> None:
        """Prepare freshly started workers (all of them, at pool start)."""

    @abstractmethod
    def push(self, workers: list[Any], named: list[tuple[str, torch.Tensor]]) -> list[Any]:
        """Start delivering `named` to every worker; return one ObjectRef per worker to wait on."""

    @abstractmethod
    def replace(self, workers: list[Any], slots: list[int]) -> list[Any]:
        """`workers[slot]` for each slot is a new actor: bring them up to date; return ObjectRefs
        to wait on (empty when the calls merely queue ahead of the workers' next request)."""


class ObjectStoreTransport(WeightTransport):
    """One `ray.put` of CPU tensors per update; every worker reads the same object."""

    def __init__(self) -> None:
        # Every update still needed to rebuild a worker's state, oldest first.
        self._log: list[tuple[frozenset[str], ray.ObjectRef]] = []

    def connect(self, workers: list[Any]) -> None:
        """Nothing to set up."""

    def push(self, workers: list[Any], named: list[tuple[str, torch.Tensor]]) -> list[Any]:
        ref = ray.put({name: t.detach().to("cpu", copy=True) for name, t in named})
        names = frozenset(name for name, _ in named)
        # An update that covers an older one makes it unnecessary for rebuilding workers.
        self._log = [(n, r) for n, r in self._log if not n <= names]
        self._log.append((names, ref))
        return [w.update_weights.remote(ref) for w in workers]

    def replace(self, workers: list[Any], slots: list[int]) -> list[Any]:
        for slot in slots:
            for _, ref in self._log:  # actor calls run in order: these land before any generate
                workers[slot].update_weights.remote(ref)
        return []


class BroadcastTransport(WeightTransport):
    """A private torch.distributed group: trainer rank 0, worker in slot i rank i + 1.

    Args:
        backend: "nccl" (trainer tensors and workers on GPUs; the workers must hold GPUs other
            than the trainer's, NCCL refuses two ranks on one device) or "gloo" (CPU).
        timeout_s: Longest wait for the rendezvous and for one collective.
        bucket_bytes: Size of the flat buffers one collective carries.
    """

    def __init__(
        self, backend: str, timeout_s: float, bucket_bytes: int = DEFAULT_BUCKET_BYTES
    ) -> None:
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"rollout.weight_backend: {backend!r}; use gloo or nccl.")
        self.backend = backend
        self.timeout_s = timeout_s
        self.bucket_bytes = bucket_bytes
        self.device = torch.device("cuda" if backend == "nccl" else "cpu")
        self._group: Any = None
        self._last: list[tuple[str, torch.Tensor]] = []

    def connect(self, workers: list[Any]) -> None:
        """(Re)build the group with every worker; the trainer hosts the rendezvous store."""
        self._group = None
        host = ray.util.get_node_ip_address()
        timeout = datetime.timedelta(seconds=self.timeout_s)
        store = dist.TCPStore(
            host, 0, len(workers) + 1, True, timeout=timeout, wait_for_workers=False
        )
        address = GroupAddress(host, store.port, len(workers) + 1, self.backend, self.timeout_s)
        joins = [w.join_weight_group.remote(address, slot + 1) for slot, w in enumerate(workers)]
        self._group = open_group(address, 0, store)  # returns once every rank has connected
        ray.get(joins, timeout=self.timeout_s)

    def push(self, workers: list[Any], named: list[tuple[str, torch.Tensor]]) -> list[Any]:
        specs = [TensorSpec(name, tuple(t.shape), t.dtype) for name, t in named]
        refs = [w.receive_weights.remote(specs, self.bucket_bytes) for w in workers]
        broadcast_weights(self._group, specs, [t for _, t in named], self.device, self.bucket_bytes)
        # Kept by reference (no copy) so a replacement worker can be brought up to date.
        self._last = named
        return refs

    def replace(self, workers: list[Any], slots: list[int]) -> list[Any]:
        self.connect(workers)  # a group's membership is fixed: rebuild it with the new actors
        return self.push(workers, self._last) if self._last else []


def make_transport(kind: str, backend: str, timeout_s: float) -> WeightTransport:
    """The transport named by `rollout.weight_transport` ("object_store" or "broadcast")."""
    if kind == "object_store":
        return ObjectStoreTransport()
    if kind == "broadcast":
        return BroadcastTransport(backend, timeout_s)
    raise ValueError(
        f"rollout.weight_transport: {kind!r}; valid names: {', '.join(WEIGHT_TRANSPORTS)}."
    )
