"""Off-policy rollouts with a staleness bound (``online.max_staleness: k``, as verl's one-step-off
and AReaL): Ray rollout workers generate the batches of steps t+1 .. t+k in a background thread
while the trainer updates on batch t. Each batch records the policy version that produced it;
the rollout correction (π_old / π_behaviour, required with k > 0) keeps the gradient an
importance-weighted one. k = 0 never builds this: the synchronous loop, bit for bit.

A weight sync and a generation never overlap (one lock): the sync waits for the generation in
flight, so a batch is generated from one version of the weights, never a mix. With k = 1 the
batch of step t+1 always comes from the weights after step t-1 (the run is reproducible); with
k > 1 a queued batch takes the newest version when it starts (staleness ≤ k either way).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from alignlib.config.schema import RunConfig
from alignlib.trainer.offline import Sampler

Collected = tuple[Any, dict[str, float]]


class ConsumedPosition:
    """The sampler position as of the last *consumed* batch: what a checkpoint saves, so a
    resumed run re-draws the prompts of the batches that were generated ahead but not trained."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.consumed = sampler.state_dict()
        self.epoch = sampler.epoch

    def state_dict(self) -> dict[str, int]:
        return dict(self.consumed)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)
        self.consumed = dict(state)
        self.epoch = self.sampler.epoch


class AheadCollector:
    """Batches of steps up to ``k`` ahead of the one being trained."""

    def __init__(self, collect: Callable[[int], Collected], sampler: Sampler, k: int) -> None:
        self.collect, self.sampler, self.k = collect, sampler, k
        self.position = ConsumedPosition(sampler)
        self.lock = threading.Lock()
        self.version = 0
        """Weight versions synced to the engine (0: the initial weights)."""
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alignlib-ahead")
        self.pending: dict[int, Future[tuple[Collected, dict[str, int], int]]] = {}

    def begin(self, start: int) -> None:
        """After a resume: the sampler is where the checkpoint left it; version = start."""
        self.version = start

    def get(self, step: int, total: int) -> Collected:
        """Step ``step``'s batch (generated now, or earlier in the background); then start the
        batches of the steps after it, up to ``k`` versions behind the trainer."""
        future = self.pending.pop(step, None) or self._submit(step)
        (rows, metrics), position, version = future.result()
        self.position.consumed, self.position.epoch = position, position["epoch"]
        staleness = float(step - 1 - version)
        for ahead in range(step + 1, min(step + self.k, total) + 1):
            if ahead not in self.pending:
                started = threading.Event()
                self.pending[ahead] = self.executor.submit(self._run, ahead, started)
                if self.k == 1:  # deterministic: step+1 always from the weights of step-1
                    started.wait()
        return rows, metrics | {"rollout/staleness": staleness}

    def _submit(self, step: int) -> Future[tuple[Collected, dict[str, int], int]]:
        return self.executor.submit(self._run, step, threading.Event())

    def _run(self, step: int, started: threading.Event) -> tuple[Collected, dict[str, int], int]:
        with self.lock:  # a batch comes from one version of the weights
            started.set()
            version = self.version
            collected = self.collect(step)
            return collected, self.sampler.state_dict(), version

    def synced(self, sync: Callable[[], None]) -> None:
        """Send new weights once no generation is in flight; they are the next version."""
        with self.lock:
            sync()
            self.version += 1

    def close(self) -> None:
        for future in self.pending.values():
            future.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)


def generate_ahead(
    config: RunConfig, corrected: bool, collect: Callable[[int], Collected], sampler: Sampler
) -> AheadCollector | None:
    """The collector for ``online.max_staleness`` k > 0 (None for 0), or one line saying what
    generating ahead needs."""
    k = config.online.max_staleness
    if k == 0:
        return None
    assert config.rollout is not None
    if config.rollout.num_workers == 0 or not corrected:
        raise ValueError(
            f"online.max_staleness {k}: generating ahead needs Ray rollout workers "
            "(rollout.num_workers > 0: the engine must not share the training module) and "
            "online.rollout_correction (e.g. {mode: tis}) to weight the stale samples"
        )
    if config.distributed.num_workers > 0:
        raise ValueError(
            "online.max_staleness with distributed.num_workers is not supported yet; set one "
            "of them to 0"
        )
    return AheadCollector(collect, sampler, k)
