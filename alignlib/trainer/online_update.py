"""Online RL stages after the rollout: old/ref log-probs, then k optimizer mini-batches.

Each mini-batch is prepared once (group advantages, normalizers, Clip-Cov/KL-Cov selection over
the whole mini-batch), then processed in micro-batches whose gradients add up to exactly the
mini-batch gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignlib.device import HOST
from alignlib.estimator import Batch, Mask, UnifiedEstimator
from alignlib.trainer.online_rollout import TrainRows
from alignlib.trainer.step import Context, HostRows, LogprobKernel, OptimizerStep

# Fields this loop can fill; an estimator that needs others is not an online RL method.
ONLINE_FIELDS = {"old_logprobs", "ref_logprobs", "entropy", "rewards", "group_ids", "roles"}


@dataclass
class RowTensors:
    """Right-padded training rows."""

    input_ids: Tensor
    attention: Tensor
    mask: Tensor
    """[R, W] 1 on completion tokens (position t scores token t, as token_logprobs returns)."""
    roles: Tensor
    group_ids: Tensor
    rewards: Tensor

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]

    @property
    def host(self) -> HostRows:
        return HostRows(self.input_ids, self.attention, self.mask)


def collate_rows(rows: TrainRows, pad_id: int) -> RowTensors:
    """Right-padded host tensors of the rows (the kernel moves each micro-batch once)."""
    width = max(len(s) for s in rows.sequences)
    count = len(rows)
    input_ids = torch.full((count, width), pad_id, dtype=torch.long, device=HOST)
    attention = torch.zeros(count, width, dtype=torch.long, device=HOST)
    mask = torch.zeros(count, width, device=HOST)
    for r, (seq, start) in enumerate(zip(rows.sequences, rows.starts, strict=True)):
        input_ids[r, : len(seq)] = torch.tensor(seq, device=HOST)
        attention[r, : len(seq)] = 1
        mask[r, start : len(seq)] = 1
    return RowTensors(
        input_ids,
        attention,
        mask,
        torch.tensor(rows.roles, device=HOST),
        torch.tensor(rows.group_ids, device=HOST),
        torch.tensor(rows.rewards, dtype=torch.float32, device=HOST),
    )


def check_online_estimator(estimator: UnifiedEstimator, name: str | None) -> None:
    """One clear line when the algorithm is no online RL method: it reads no rewards (SFT, the
    DPO family) or needs batch fields online rollouts do not make (pairs, π_t)."""
    needs = estimator.requirements()
    missing = {k: v for k, v in needs.items() if k not in ONLINE_FIELDS}
    if missing or "rewards" not in needs:
        why = (
            "batch.{} ({})".format(*next(iter(missing.items())))
            if missing
            else "no rewards: it trains on given completions"
        )
        raise ValueError(
            f"algorithm {name or '(components)'} is not an online RL method (it needs {why}); "
            "with a rollout section use grpo, dr_grpo, ppo, clip_cov, kl_cov, hpt, hpt_paper "
            "or luffy"
        )


def needs_live_logprobs(estimator: UnifiedEstimator) -> bool:
    """True when a mask selects tokens in ``prepare`` from the current log-probs (Clip-Cov,
    KL-Cov): later mini-batches then need a fresh no-grad pass before they are prepared."""
    return any(
        type(mask).prepare is not Mask.prepare
        for term in estimator.terms
        for mask in getattr(term, "masks", ())
    )


def _chunks(indices: Tensor, size: int) -> list[Tensor]:
    return [indices[i : i + size] for i in range(0, indices.numel(), size)]


def policy_logprobs(
    kernel: LogprobKernel,
    rows: RowTensors,
    indices: Tensor,
    micro_batch_size: int,
    context: Context | None = None,
) -> tuple[Tensor, Tensor]:
    """([len(indices), W] log-probs, entropy) of the given rows on the kernel's device, no
    gradient, eval mode. Old/ref/current log-probs are only read under ``rows.mask``."""
    subset = HostRows(rows.input_ids[indices], rows.attention[indices], rows.mask[indices])
    logprobs, entropy = kernel.all_rows(
        subset, micro_batch_size, with_entropy=True, context=context
    )
    assert entropy is not None
    return logprobs, entropy


def minibatch_rows(group_ids: Tensor, count: int) -> list[Tensor]:
    """Row indices of ``count`` mini-batches made of whole groups (group advantages need them)."""
    groups = torch.unique(group_ids, sorted=True)
    parts = groups.tensor_split(min(count, groups.numel()))
    return [torch.isin(group_ids, part).nonzero().flatten() for part in parts if part.numel()]


@dataclass
class Updater:
    """Everything one optimizer mini-batch needs."""

    kernel: LogprobKernel
    estimator: UnifiedEstimator
    optimizer_step: OptimizerStep
    micro_batch_size: int

    def step(
        self,
        rows: RowTensors,
        indices: Tensor,
        old: Tensor | None,
        ref: Tensor | None,
        current: Tensor | None,
        step: int = 0,
    ) -> tuple[dict[str, float], Tensor]:
        """Accumulate the mini-batch ``indices``' gradients, then clip and step (see
        :meth:`gradients`; ``step`` names the run step in a non-finite-gradient message)."""
        metrics, entropy = self.gradients(rows, indices, old, ref, current)
        return metrics | self.optimizer_step(step), entropy

    def gradients(
        self,
        rows: RowTensors,
        indices: Tensor,
        old: Tensor | None,
        ref: Tensor | None,
        current: Tensor | None,
    ) -> tuple[dict[str, float], Tensor]:
        """Prepare the mini-batch ``indices`` and accumulate its micro-batch gradients.

        ``old``, ``ref``, ``current`` ([len(indices), W], on the device) come from no-grad
        passes. ``current`` holds the rows' present log-probs, which Clip-Cov/KL-Cov's token
        selection and the covariance statistics read in ``prepare``. ``old`` None means
        on-policy: the behaviour log-probs are the live ones, detached, from the same forward
        (verl does the same with one mini-batch), which saves a whole no-grad pass; the
        covariance statistics are then computed once the live log-probs are known.

        Returns the metrics and the [len(indices), W] token entropy on the device (detached;
        0 on prompt columns before the micro-batch's first completion token).
        """
        needs = self.estimator.requirements()
        device = self.kernel.device
        placeholder = torch.zeros(indices.numel(), rows.input_ids.shape[1], device=device)
        full = Batch(
            logprobs=current if current is not None else placeholder,
            mask=rows.mask[indices],
            old_logprobs=old if old is not None else placeholder,
            ref_logprobs=ref,
            entropy=placeholder if "entropy" in needs else None,
            rewards=rows.rewards[indices],
            group_ids=rows.group_ids[indices],
            roles=rows.roles[indices],
        ).to(device)
        prepared = self.estimator.prepare(full)
        totals: dict[str, float] = {}
        live, entropies = placeholder.clone(), placeholder.clone()
        host = rows.host
        for chunk in _chunks(torch.arange(indices.numel(), device=HOST), self.micro_batch_size):
            out = self.kernel(host, indices[chunk], with_entropy=True)
            assert out.entropy is not None
            logprobs, entropy = out.logprobs, out.entropy
            if "entropy" not in needs:
                entropy = entropy.detach()  # frees its graph now: only a metric reads it
            on_device = chunk.to(device)
            live[on_device, : out.width] = logprobs.detach()
            entropies[on_device, : out.width] = entropy.detach()
            micro = prepared.select(on_device).narrow(out.width).replace(logprobs=logprobs)
            if old is None:
                micro = micro.replace(old_logprobs=logprobs.detach())
            if "entropy" in needs:
                micro = micro.replace(entropy=entropy)
            result = self.estimator(micro)
            result.loss.backward()
            for key, value in result.metrics.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        if old is None:  # statistics of the live log-probs, now that they are known
            prepared = self.estimator.prepare(full.replace(logprobs=live, old_logprobs=live))
        totals |= {k: float(v) for k, v in prepared.prepared_metrics.items()}
        return totals, entropies
