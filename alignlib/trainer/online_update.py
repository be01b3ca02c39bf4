"""Online RL stages after the rollout: the rows as host tensors, old/ref log-probs, and the
k optimizer mini-batches of whole groups the loop's update takes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignlib.device import HOST
from alignlib.estimator import Batch, Mask, UnifiedEstimator
from alignlib.trainer.online_rollout import TrainRows
from alignlib.trainer.step import Context, HostRows, LogprobKernel
from alignlib.trainer.update import MiniBatch

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


def online_minibatch(
    rows: RowTensors,
    indices: Tensor,
    old: Tensor | None,
    ref: Tensor | None,
    current: Tensor | None,
    micro_batch_size: int,
) -> MiniBatch:
    """The rows ``indices`` as one optimizer mini-batch. ``old`` / ``ref`` / ``current``
    ([len(indices), W], from no-grad passes) are the behaviour, reference and present
    log-probs; ``old`` None means on-policy (the update's own forward gives them)."""
    subset = HostRows(rows.input_ids[indices], rows.attention[indices], rows.mask[indices])
    placeholder = torch.zeros(indices.numel(), rows.input_ids.shape[1], device=HOST)
    fields = Batch(
        logprobs=current if current is not None else placeholder,
        mask=subset.scored,
        old_logprobs=old if old is not None else placeholder,
        ref_logprobs=ref,
        entropy=placeholder,
        rewards=rows.rewards[indices],
        group_ids=rows.group_ids[indices],
        roles=rows.roles[indices],
    )
    micro = _chunks(torch.arange(indices.numel(), device=HOST), micro_batch_size)
    return MiniBatch(subset, fields, micro, on_policy=old is None, with_entropy=True)
