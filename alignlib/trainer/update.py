"""One optimizer step on one mini-batch, the same for every source (offline data, online
rollouts, INPO pairs): prepare the whole mini-batch once, accumulate the micro-batch gradients
(which add up to exactly the mini-batch gradient), then clip and step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from alignlib.estimator import Batch, UnifiedEstimator
from alignlib.trainer.head_hooks import log_sum_sq_probs
from alignlib.trainer.step import Context, HostRows, LogprobKernel, MicroLogprobs, OptimizerStep


@dataclass(frozen=True)
class LiveReference:
    """π_ref computed per micro-batch rather than cached: ``kernel`` (a frozen copy's, or the
    policy's own) under ``context`` (the policy with its LoRA adapter off)."""

    kernel: LogprobKernel
    context: Context | None = None

    def __call__(self, rows: HostRows, selected: Tensor) -> Tensor:
        """[r, w] log π_ref of the ``selected`` rows (no gradient)."""
        return self.kernel(rows, selected, grad=False, context=self.context).logprobs


@dataclass(frozen=True)
class MiniBatch:
    """The rows of one optimizer step, as a source hands them to :func:`update`."""

    rows: HostRows
    """[R, W] token ids, attention and scored (completion) mask, on the host."""
    fields: Batch
    """Everything the estimator reads except what the forward computes. ``fields.logprobs``
    holds the rows' present log-probs when a mask selects tokens from them in ``prepare``
    (Clip-Cov, KL-Cov), zeros otherwise."""
    micro_batches: list[Tensor]
    """Row indices (host, long) of each forward/backward pass; together every row once
    (offline: whole pairs stay together)."""
    on_policy: bool = False
    """The behaviour log-probs are the update's own, detached: no separate no-grad pass was
    made (one mini-batch, no token selection from live log-probs; verl does the same)."""
    live_reference: LiveReference | None = None
    """The reference, computed per micro-batch rather than cached."""
    with_entropy: bool = False
    """Compute the per-token entropy even when the estimator does not need it (a metric)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """What the source measured while building it (added to the step's metrics)."""


@dataclass(frozen=True)
class UpdateResult:
    metrics: dict[str, float]
    entropy: Tensor | None
    """[R, W] detached per-token entropy on the device, when it was computed."""


def update(
    kernel: LogprobKernel,
    estimator: UnifiedEstimator,
    optimizer_step: OptimizerStep,
    batch: MiniBatch,
    step: int,
    seed: int = 0,
) -> UpdateResult:
    """Prepare, accumulate every micro-batch's gradient, clip and step; returns the metrics.
    ``seed`` (the run's): dropout masks are drawn per micro-batch from (seed, step, rows)."""
    metrics, entropy = accumulate(kernel, estimator, batch, (seed, step))
    kernel.world.sync_gradients(kernel.model)  # data-parallel workers: per-rank parts add up
    estimator.observe(metrics)  # the same summed metrics on every rank: the same adaptation
    return UpdateResult(metrics | optimizer_step(step), entropy)


def accumulate(
    kernel: LogprobKernel,
    estimator: UnifiedEstimator,
    batch: MiniBatch,
    dropout_key: tuple[int, int] = (0, 0),
    train: bool = True,
) -> tuple[dict[str, float], Tensor | None]:
    """The gradient half of :func:`update` (no optimizer step): the mini-batch is prepared on
    the device — normalizers, group advantages and Clip-Cov/KL-Cov token selection see all of
    it — then each micro-batch runs forward and backward. With data-parallel workers every rank
    prepares the whole mini-batch and runs its share of the micro-batches; the metrics, live
    log-probs and entropies are summed over the ranks (gradients: in :func:`update`).
    ``train=False`` scores the mini-batch without autograd (held-out rows): the same loss and
    metrics, no backward."""
    needs = estimator.requirements()
    full = batch.fields.to(kernel.device)
    prepared = estimator.prepare(full)
    with_entropy = batch.with_entropy or "entropy" in needs
    # WPO's log Σπ² from the training forward itself, as TRL's fused head gives it.
    stat = log_sum_sq_probs(kernel.temperature) if "log_sum_sq_probs" in needs else None
    live = torch.zeros_like(full.mask)
    entropies = torch.zeros_like(full.mask) if with_entropy else None
    totals: dict[str, float] = {}
    world = kernel.world
    share = world.padded_share(batch.micro_batches)
    # Per-rank losses are normalized by the mini-batch's global counts: they add up across
    # ranks. FSDP2 averages what it reduce-scatters, so its ranks scale the loss by the size.
    scale = float(world.size) if world.sharded else 1.0
    stochastic = train and has_dropout(kernel.model)
    for i, (rows, real) in enumerate(share):
        if train:
            _gradient_sync(kernel, last=i == len(share) - 1)
        # Dropout masks keyed by the micro-batch (not by how many passes this rank made before):
        # any number of workers draws the masks one process would.
        key = (*dropout_key, world.rank + i * world.size, int(batch.rows.input_ids[rows].sum()))
        with micro_batch_rng(key, kernel.device) if stochastic else nullcontext():
            out = kernel(batch.rows, rows, with_entropy=with_entropy, grad=train, statistic=stat)
        on_device = rows.to(kernel.device)
        micro = live_fields(prepared.select(on_device).narrow(out.width), out, needs)
        if batch.on_policy:
            micro = micro.replace(old_logprobs=out.logprobs.detach())
        if batch.live_reference is not None and "ref_logprobs" in needs:
            micro = micro.replace(ref_logprobs=batch.live_reference(batch.rows, rows))
        result = estimator(micro)
        if train:
            (result.loss * (scale if real else 0.0)).backward()
        if not real:  # a padding step: every FSDP2 rank runs as many passes as the others
            continue
        live[on_device, : out.width] = out.logprobs.detach().to(live.dtype)
        if out.entropy is not None and entropies is not None:
            entropies[on_device, : out.width] = out.entropy.detach().to(entropies.dtype)
        for key, value in result.metrics.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    totals = summed_over_ranks(kernel, totals, live, entropies)
    if batch.on_policy:  # statistics of the live log-probs, now that they are known
        prepared = estimator.prepare(full.replace(logprobs=live, old_logprobs=live))
    totals |= {k: float(v) for k, v in prepared.prepared_metrics.items()}
    return totals | batch.metrics, entropies


def summed_over_ranks(
    kernel: LogprobKernel, totals: dict[str, float], live: Tensor, entropies: Tensor | None
) -> dict[str, float]:
    """Each rank's metrics, live log-probs and entropies (in place) summed over the ranks."""
    world = kernel.world
    world.sum_(live)
    if entropies is not None:
        world.sum_(entropies)
    return world.sum_metrics(totals, kernel.device)


def live_fields(micro: Batch, out: MicroLogprobs, needs: dict[str, str]) -> Batch:
    """The micro-batch with what its forward gave: log-probs, and entropy and log Σπ² when
    the estimator reads them."""
    micro = micro.replace(logprobs=out.logprobs)
    if out.entropy is not None and "entropy" in needs:
        micro = micro.replace(entropy=out.entropy)
    if out.statistic is not None:
        micro = micro.replace(log_sum_sq_probs=out.statistic)
    return micro


def has_dropout(model: nn.Module) -> bool:
    """Whether a training forward of ``model`` draws random numbers (an active dropout)."""
    return model.training and any(
        isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in model.modules()
    )


@contextmanager
def micro_batch_rng(key: tuple[int, ...], device: torch.device) -> Iterator[None]:
    """Run a forward with the RNG seeded from ``key``, then restore the caller's stream (a
    rollout's sampling draws stay what they were). Gradient checkpointing replays the forward
    with the state this sets, so recomputed masks match."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(hash(key) % (2**63))
        yield


def _gradient_sync(kernel: LogprobKernel, last: bool) -> None:
    """FSDP2 reduce-scatters gradients after every backward unless told not to: only after a
    mini-batch's last micro-batch (the accumulation stays sharded until then)."""
    setter = getattr(kernel.module, "set_requires_gradient_sync", None)
    if setter is not None:
        setter(last)


COUNTERS = ("skipped_steps",)
"""Metrics summed over a step's mini-batches; every other one is averaged."""


def merge_results(results: list[UpdateResult]) -> dict[str, float]:
    """One step's metrics from its k mini-batch updates."""
    totals: dict[str, float] = {}
    for result in results:
        for key, value in result.metrics.items():
            totals[key] = totals.get(key, 0.0) + value
    count = max(1, len(results))
    return {k: v if k in COUNTERS else v / count for k, v in totals.items()}
