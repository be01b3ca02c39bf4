"""A pool of Ray actors, each holding one rollout engine; prompts are sharded across them.

Weights reach the workers through a `WeightTransport` (rollout/weight_sync.py): the object
store (default) or a broadcast in a private torch.distributed group (NCCL between GPUs). A worker
that dies is replaced (the transport brings it up to date) and its shard re-runs, so one crash
costs time, not results.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError

from alignlib.rollout.base import Generation, NamedTensors, Prompts, RolloutEngine, SamplingParams
from alignlib.rollout.ray_cluster import ensure_ray
from alignlib.rollout.weight_sync import (
    GroupAddress,
    TensorSpec,
    WeightTransport,
    broadcast_weights,
    make_transport,
    open_group,
)


class _RolloutWorker:
    """Ray actor body: builds the engine inside the worker process and serves calls to it."""

    def __init__(self, engine_factory: Callable[[], RolloutEngine]) -> None:
        self.engine = engine_factory()
        self._group: Any = None
        self._device = torch.device("cpu")

    def ready(self) -> int:
        return os.getpid()

    def generate(self, prompts: Prompts, sampling: SamplingParams) -> list[list[Generation]]:
        return self.engine.generate(prompts, sampling)

    def update_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.engine.update_weights(weights)

    def load_adapter(self, path: str) -> None:
        self.engine.load_adapter(path)

    def join_weight_group(self, address: GroupAddress, rank: int) -> None:
        # Ray exposes this actor's GPUs as cuda:0.. through CUDA_VISIBLE_DEVICES.
        self._device = torch.device("cuda" if address.backend == "nccl" else "cpu")
        self._group = open_group(address, rank)

    def receive_weights(self, specs: list[TensorSpec], bucket_bytes: int) -> None:
        self.engine.update_weights(
            broadcast_weights(self._group, specs, None, self._device, bucket_bytes)
        )


class RayRolloutPool:
    """Run `num_workers` rollout engines as Ray actors behind one `generate` call.

    Args:
        engine_factory: Zero-argument callable returning a `RolloutEngine`; called inside each
            actor. It is pickled by reference, so define it in an importable module (a
            `functools.partial` of a module-level function works), not in a test or `__main__`.
        num_workers: Number of actors.
        ray_address: Existing cluster to join (e.g. "auto"). None: reuse the current Ray session
            or start a local one sized to this machine.
        timeout_s: Upper bound on any single wait for workers (start-up, generate, weights).
        num_cpus_per_worker: Ray CPU reservation per actor. Fractional on purpose: actors that
            hold whole CPUs can starve later tasks on small machines and hang them.
        num_gpus_per_worker: Ray GPU reservation per actor.
        max_retries: How often one shard may be re-run after its worker died.
        weight_transport: "object_store" (CPU copies through Ray, works everywhere) or
            "broadcast" (a private torch.distributed group; see rollout/weight_sync.py).
        weight_backend: Collective backend for "broadcast": "nccl" (GPU trainer and GPU workers
            on other devices) or "gloo" (CPU); "auto" picks nccl when the workers hold GPUs and
            this process sees one.
        scheduling: One Ray scheduling strategy per worker (e.g. its placement-group bundle);
            a replacement goes where the worker it replaces was. Empty: Ray places them.
    """

    def __init__(
        self,
        engine_factory: Callable[[], RolloutEngine],
        num_workers: int = 2,
        ray_address: str | None = None,
        timeout_s: float = 600.0,
        num_cpus_per_worker: float = 0.5,
        num_gpus_per_worker: float = 0.0,
        max_retries: int = 2,
        weight_transport: str = "object_store",
        weight_backend: str = "auto",
        scheduling: Sequence[Any] = (),
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"RayRolloutPool: num_workers={num_workers} must be >= 1.")
        self._owns_ray = ensure_ray(ray_address, timeout_s)
        self._factory = engine_factory
        self._actor_options = {"num_cpus": num_cpus_per_worker, "num_gpus": num_gpus_per_worker}
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.restarts = 0
        """How many workers have been replaced so far (observability, tests)."""
        if weight_backend == "auto":
            on_gpus = num_gpus_per_worker > 0 and torch.cuda.is_available()
            weight_backend = "nccl" if on_gpus else "gloo"
        self._transport: WeightTransport = make_transport(
            weight_transport, weight_backend, timeout_s
        )
        self._adapter: str | None = None  # the LoRA adapter folder every worker applies
        self._scheduling = list(scheduling)
        self._workers = [self._start(slot) for slot in range(num_workers)]
        try:
            self._get([w.ready.remote() for w in self._workers], "start the workers")
            self._transport.connect(self._workers)
        except (RayActorError, TimeoutError) as err:
            self.shutdown()
            cause = str(err).strip().splitlines()[-1]  # the root exception; traceback in __cause__
            raise RuntimeError(
                f"RayRolloutPool: a worker failed to start ({cause}); engine_factory must build "
                "an engine inside a fresh process (importable, no unpicklable state)."
            ) from err

    @property
    def num_workers(self) -> int:
        """Number of actors in the pool."""
        return len(self._workers)

    def worker_pids(self) -> list[int]:
        """Process id of every worker, in slot order."""
        return self._get([w.ready.remote() for w in self._workers], "query the workers")

    def kill_worker(self, slot: int) -> None:
        """Kill one worker (fault-injection for tests); the next call replaces it."""
        ray.kill(self._workers[slot], no_restart=True)

    # -------------------------------------------------------------------------------- generation
    def generate(self, prompts: Prompts, sampling: SamplingParams) -> list[list[Generation]]:
        """Shard `prompts` contiguously across workers; return results in prompt order.

        Sampled results are reproducible for a fixed seed and worker count: each shard gets a
        seed derived from `sampling.seed` and its first prompt index.
        """
        prompts = list(prompts)
        bounds = _shard_bounds(len(prompts), self.num_workers)
        shards = {slot: (lo, hi) for slot, (lo, hi) in enumerate(bounds) if hi > lo}
        pending = {
            self._submit(slot, prompts[lo:hi], sampling, lo): slot
            for slot, (lo, hi) in shards.items()
        }
        attempts = dict.fromkeys(shards, 0)
        results: list[list[Generation]] = []
        by_slot: dict[int, list[list[Generation]]] = {}
        deadline = time.monotonic() + self.timeout_s
        while pending:
            left = max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=left)
            if not ready:
                stuck = sorted(pending.values())
                self._replace(stuck)  # leave the pool usable: replace the hung workers
                raise TimeoutError(
                    f"RayRolloutPool.generate: workers {stuck} gave no result within "
                    f"{self.timeout_s:.0f} s; they were restarted. Raise timeout_s for long "
                    "generations or check the worker logs."
                )
            ref = ready[0]
            slot = pending.pop(ref)
            try:
                by_slot[slot] = ray.get(ref, timeout=self.timeout_s)
            except RayActorError as err:
                attempts[slot] += 1
                if attempts[slot] > self.max_retries:
                    raise RuntimeError(
                        f"RayRolloutPool.generate: worker {slot} died {attempts[slot]} times on "
                        f"prompts {shards[slot]}; last error: {err}"
                    ) from err
                self._replace([slot])
                lo, hi = shards[slot]
                pending[self._submit(slot, prompts[lo:hi], sampling, lo)] = slot
        for slot in sorted(by_slot):
            lo, _ = shards[slot]
            for gens in by_slot[slot]:
                for g in gens:
                    g.prompt_index += lo  # workers number prompts within their shard
                results.append(gens)
        return results

    def _submit(
        self, slot: int, prompts: Prompts, sampling: SamplingParams, start: int
    ) -> ray.ObjectRef:
        if sampling.seed is not None:
            sampling = dataclasses.replace(
                sampling, seed=hash((sampling.seed, start)) & 0x7FFF_FFFF_FFFF_FFFF
            )
        return self._workers[slot].generate.remote(prompts, sampling)

    # ----------------------------------------------------------------------------------- weights
    def update_weights(self, weights: NamedTensors) -> None:
        """Send weights (all or a subset, by name) to every worker through the transport."""
        named = list(weights.items() if isinstance(weights, Mapping) else weights)
        try:
            refs = self._transport.push(self._workers, named)
        except (RuntimeError, TimeoutError):
            # A collective failed (a member died mid-broadcast): survivors may be stuck inside
            # it, so every worker is replaced and the group rebuilt around the new ones.
            self._replace(list(range(self.num_workers)))
            refs = self._transport.push(self._workers, named)
        self._wait_or_replace(refs, "update weights")

    def load_adapter(self, path: str) -> None:
        """Make every worker apply the PEFT adapter in folder `path` (a path all workers can
        read: the local disk on one machine, shared storage on a cluster)."""
        self._adapter = path
        self._wait_or_replace([w.load_adapter.remote(path) for w in self._workers], "load it")

    # --------------------------------------------------------------------------------- lifecycle
    def _wait_or_replace(self, refs: list[ray.ObjectRef], what: str) -> None:
        """Wait for one call per worker; workers that died meanwhile are replaced, and the
        replacements are brought up to date (weights through the transport, the adapter)."""
        dead = []
        for slot, ref in enumerate(refs):
            try:
                self._get([ref], f"{what} on worker {slot}")
            except RayActorError:
                dead.append(slot)
        if dead:
            self._replace(dead)

    def _replace(self, slots: list[int]) -> None:
        """Kill the workers in `slots`, start new ones and bring them up to date (all at once:
        a broadcast group is rebuilt only after every dead member is gone)."""
        for slot in slots:
            ray.kill(self._workers[slot], no_restart=True)
            self._workers[slot] = self._start(slot)
        self.restarts += len(slots)
        refs = self._transport.replace(self._workers, slots)
        if self._adapter is not None:
            refs += [self._workers[slot].load_adapter.remote(self._adapter) for slot in slots]
        self._get(refs, f"bring workers {slots} up to date")

    def _start(self, slot: int) -> Any:
        options = dict(self._actor_options)
        if slot < len(self._scheduling):
            options["scheduling_strategy"] = self._scheduling[slot]
        return ray.remote(_RolloutWorker).options(**options).remote(self._factory)

    def _get(self, refs: list[ray.ObjectRef], what: str) -> list[Any]:
        try:
            return ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError as err:
            raise TimeoutError(
                f"RayRolloutPool: could not {what} within {self.timeout_s:.0f} s; raise timeout_s "
                "or check that the cluster has free CPUs for the actors (ray status)."
            ) from err

    def shutdown(self) -> None:
        """Kill the workers; stop Ray too if this pool started it."""
        for w in self._workers:
            ray.kill(w, no_restart=True)
        self._workers = []
        if self._owns_ray:
            ray.shutdown()

    def __enter__(self) -> RayRolloutPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _shard_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """Split range(n) into `parts` contiguous, near-equal pieces (earlier pieces one larger)."""
    size, extra = divmod(n, parts)
    bounds, lo = [], 0
    for p in range(parts):
        hi = lo + size + (p < extra)
        bounds.append((lo, hi))
        lo = hi
    return bounds
