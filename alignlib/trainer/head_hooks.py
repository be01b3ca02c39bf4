"""Per-position statistics of the LM head's logits, read by a forward hook during one no-grad
pass over every row: the log-mass a top-k/top-p engine kept (a rollout correction's log S_t)
and log Σ_v π(v)² (WPO's weights). A hooked head is called per chunk of positions
(``token_logprobs``' module path, padded: ``LogprobKernel.pack_mode``), so the chunks
concatenate to the scored positions, and no [T, V] logits tensor is kept."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from alignlib.estimator import kept_log_mass
from alignlib.trainer.step import HostRows, LogprobKernel
from alignlib.trainer.update import MiniBatch

Reduce = Callable[[Tensor], Tensor]
"""[n, V] logits → [n] a statistic of each position's distribution."""


class HeadHook:
    """A forward hook on the LM head that records ``reduce`` of every chunk of logits the head
    computes, in order, at most 2²² logits at a time (bounded [positions, V] buffers)."""

    def __init__(self, reduce: Reduce) -> None:
        self.reduce = reduce
        self.parts: list[Tensor] = []

    def __call__(self, module: nn.Module, inputs: object, logits: Tensor) -> None:
        flat = logits.detach().reshape(-1, logits.shape[-1])
        step = max(1, (1 << 22) // logits.shape[-1])
        values = [self.reduce(flat[i : i + step]) for i in range(0, flat.shape[0], step)]
        self.parts.append(torch.cat(values).reshape(logits.shape[:-1]).float())


def kept_mass(temperature: float, top_k: int, top_p: float) -> Reduce:
    """log S_t: the tempered mass an engine's top-k / top-p truncation kept."""
    return lambda logits: kept_log_mass(logits, temperature, top_k, top_p)


def log_sum_sq_probs(temperature: float) -> Reduce:
    """log Σ_v π(v)², π the tempered softmax (in at least fp32)."""

    def reduce(logits: Tensor) -> Tensor:
        tempered = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
        return torch.logsumexp(2 * torch.log_softmax(tempered, dim=-1), dim=-1)

    return reduce


@torch.no_grad()
def logprobs_and_statistic(
    kernel: LogprobKernel, host: HostRows, micro_batch_size: int, reduce: Reduce
) -> tuple[Tensor, Tensor]:
    """([R, W] log-probs, [R, W] ``reduce`` of the logits at each scored position) of every row
    in one no-grad pass (eval mode, shared among data-parallel ranks as
    ``LogprobKernel.all_rows`` does), on the kernel's device."""
    model = kernel.model
    logprobs = torch.zeros(host.input_ids.shape, device=kernel.device)
    statistic = torch.zeros_like(logprobs)
    hook = HeadHook(reduce)
    handle = model.get_output_embeddings().register_forward_hook(hook)  # type: ignore[operator]
    was_training = model.training
    model.eval()
    chunks = kernel.passes(host, micro_batch_size)  # the hook is on: padded passes
    try:
        for chunk, real in kernel.world.padded_share(chunks):
            hook.parts = []
            out = kernel(host, chunk, grad=False)
            if not real:  # a sharded model needs every rank in every forward
                continue
            target = chunk.to(kernel.device)
            logprobs[target, : out.width] = out.logprobs.float()
            if hook.parts:  # positions from the first scored one to the row end
                values = torch.cat(hook.parts, dim=1)
                statistic[target, out.width - values.shape[1] : out.width] = values
    finally:
        handle.remove()
        model.train(was_training)
        reshard = getattr(kernel.module, "reshard", None)
        if reshard is not None:  # as all_rows: a forward without a backward leaves it gathered
            reshard()
    kernel.world.sum_(logprobs)
    kernel.world.sum_(statistic)
    return logprobs, statistic


def with_log_sum_sq_probs(kernel: LogprobKernel, batch: MiniBatch, rows_per_pass: int) -> MiniBatch:
    """The mini-batch with the present policy's log Σ_v π(v)² at every position (WPO's
    weights): one no-grad pass before the update, whose policy is the update's own (its
    weights change only after the mini-batch's last micro-batch)."""
    _, statistic = logprobs_and_statistic(
        kernel, batch.rows, rows_per_pass, log_sum_sq_probs(kernel.temperature)
    )
    return dataclasses.replace(batch, fields=batch.fields.replace(log_sum_sq_probs=statistic))
