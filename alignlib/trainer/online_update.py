"""Online RL stages after the rollout: old/ref log-probs, then k optimizer mini-batches.

Each mini-batch is prepared once (group advantages, normalizers, Clip-Cov/KL-Cov selection over
the whole mini-batch), then processed in micro-batches whose gradients add up to exactly the
mini-batch gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from alignlib.estimator import Batch, Mask, UnifiedEstimator
from alignlib.trainer.logprobs import first_masked_position, token_logprobs
from alignlib.trainer.online_rollout import TrainRows

Context = Callable[[], AbstractContextManager]

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


def collate_rows(rows: TrainRows, pad_id: int) -> RowTensors:
    width = max(len(s) for s in rows.sequences)
    count = len(rows)
    input_ids = torch.full((count, width), pad_id, dtype=torch.long)
    attention = torch.zeros(count, width, dtype=torch.long)
    mask = torch.zeros(count, width)
    for r, (seq, start) in enumerate(zip(rows.sequences, rows.starts, strict=True)):
        input_ids[r, : len(seq)] = torch.tensor(seq)
        attention[r, : len(seq)] = 1
        mask[r, start : len(seq)] = 1
    return RowTensors(
        input_ids,
        attention,
        mask,
        torch.tensor(rows.roles),
        torch.tensor(rows.group_ids),
        torch.tensor(rows.rewards, dtype=torch.float32),
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


@torch.no_grad()
def policy_logprobs(
    model: nn.Module,
    rows: RowTensors,
    indices: Tensor,
    micro_batch_size: int,
    chunk_size: int,
    temperature: float,
    context: Context | None = None,
) -> tuple[Tensor, Tensor]:
    """([len(indices), W] log-probs, entropy) of the given rows, no gradient, eval mode."""
    width = rows.input_ids.shape[1]
    logprobs = torch.zeros(indices.numel(), width)
    entropy = torch.zeros(indices.numel(), width)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout: the behaviour policy is the deterministic one that sampled
    try:
        position = 0
        for chunk in _chunks(indices, micro_batch_size):
            narrow = int(rows.attention[chunk].sum(-1).max())
            ids = rows.input_ids[chunk, :narrow].to(device)
            attention = rows.attention[chunk, :narrow].to(device)
            with context() if context is not None else nullcontext():
                lp, ent = token_logprobs(
                    model,
                    ids,
                    attention,
                    chunk_size=chunk_size,
                    with_entropy=True,
                    temperature=temperature,
                    # Old/ref/current log-probs are only read under rows.mask: skip the prompt.
                    first_scored_position=first_masked_position(rows.mask[chunk, :narrow]),
                )
            assert ent is not None
            stop = position + chunk.numel()
            logprobs[position:stop, :narrow] = lp.float().cpu()
            entropy[position:stop, :narrow] = ent.float().cpu()
            position = stop
    finally:
        model.train(was_training)
    return logprobs, entropy


def minibatch_rows(group_ids: Tensor, count: int) -> list[Tensor]:
    """Row indices of ``count`` mini-batches made of whole groups (group advantages need them)."""
    groups = torch.unique(group_ids, sorted=True)
    parts = groups.tensor_split(min(count, groups.numel()))
    return [torch.isin(group_ids, part).nonzero().flatten() for part in parts if part.numel()]


@dataclass
class Updater:
    """Everything one optimizer mini-batch needs."""

    model: nn.Module
    estimator: UnifiedEstimator
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    micro_batch_size: int
    chunk_size: int
    temperature: float
    grad_clip: float | None
    skip_grad_norm: float | None

    def step(
        self,
        rows: RowTensors,
        indices: Tensor,
        old: Tensor | None,
        ref: Tensor | None,
        current: Tensor | None,
    ) -> tuple[dict[str, float], Tensor]:
        """Prepare the mini-batch ``indices``, accumulate micro-batch gradients, clip, step.

        ``current`` holds the rows' present log-probs (detached), which Clip-Cov/KL-Cov's token
        selection and the covariance statistics read in ``prepare``. ``old`` None means
        on-policy: the behaviour log-probs are the live ones, detached, from the same forward
        (verl does the same with one mini-batch), which saves a whole no-grad pass; the
        covariance statistics are then computed once the live log-probs are known.

        Returns the metrics and the [len(indices), W] token entropy (detached; 0 on prompt
        columns before the micro-batch's first completion token, which the LM head skips).
        """
        needs = self.estimator.requirements()
        placeholder = torch.zeros(indices.numel(), rows.input_ids.shape[1])
        full = Batch(
            logprobs=current if current is not None else placeholder,
            mask=rows.mask[indices],
            old_logprobs=old if old is not None else placeholder,
            ref_logprobs=ref,
            entropy=placeholder if "entropy" in needs else None,
            rewards=rows.rewards[indices],
            group_ids=rows.group_ids[indices],
            roles=rows.roles[indices],
        )
        prepared = self.estimator.prepare(full)
        totals: dict[str, float] = {}
        live = placeholder.clone()
        entropies = placeholder.clone()
        device = next(self.model.parameters()).device
        local = torch.arange(indices.numel())
        for chunk in _chunks(local, self.micro_batch_size):
            narrow = int(rows.attention[indices[chunk]].sum(-1).max())
            ids = rows.input_ids[indices[chunk], :narrow].to(device)
            attention = rows.attention[indices[chunk], :narrow].to(device)
            logprobs, entropy = token_logprobs(
                self.model,
                ids,
                attention,
                chunk_size=self.chunk_size,
                with_entropy=True,
                temperature=self.temperature,
                # The loss and the entropy metric only read completion tokens (rows.mask), so
                # the LM head skips the prompt columns before the earliest completion token.
                first_scored_position=first_masked_position(rows.mask[indices[chunk], :narrow]),
            )
            assert entropy is not None
            if "entropy" not in needs:
                entropy = entropy.detach()  # frees its graph now: only a metric reads it
            logprobs, entropy = logprobs.cpu(), entropy.cpu()
            live[chunk, :narrow] = logprobs.detach()
            entropies[chunk, :narrow] = entropy.detach()
            micro = prepared.select(chunk).narrow(narrow).replace(logprobs=logprobs)
            if old is None:
                micro = micro.replace(old_logprobs=logprobs.detach())
            if "entropy" in needs:
                micro = micro.replace(entropy=entropy)
            out = self.estimator(micro)
            out.loss.backward()
            for key, value in out.metrics.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        if old is None:  # statistics of the live log-probs, now that they are known
            prepared = self.estimator.prepare(full.replace(logprobs=live, old_logprobs=live))
        totals |= {k: float(v) for k, v in prepared.prepared_metrics.items()}
        limit = self.grad_clip if self.grad_clip is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, limit))
        # HPT's rule, and always for a non-finite norm: one bad batch must not wreck the model.
        skip = not math.isfinite(grad_norm) or (
            self.skip_grad_norm is not None and grad_norm > self.skip_grad_norm
        )
        if not skip:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        totals |= {"grad_norm": grad_norm, "skipped_steps": float(skip)}
        return totals, entropies
