"""The no-grad passes over an online step's rows before its update: π_old (with the entropy of
the same pass, the mass log S_t a truncating engine kept, and log Σ_v π_old(v)²), π_ref, and the
engine's log-probs on the trainer's scale; what each mini-batch takes of them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignlib.device import HOST
from alignlib.estimator import Role
from alignlib.trainer.head_hooks import Reduce, kept_mass, log_sum_sq_probs
from alignlib.trainer.online_update import RolloutPasses, RowTensors
from alignlib.trainer.step import Context, HostRows, LogprobKernel


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


def old_pass(
    kernel: LogprobKernel, rows: RowTensors, micro_batch_size: int, statistic: Reduce | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """([R, W] old log-probs, their entropy, ``statistic`` of the same logits or None) in one
    no-grad pass over every row."""
    out = kernel.every_row(rows.host, micro_batch_size, with_entropy=True, statistic=statistic)
    assert out.entropy is not None
    return out.logprobs, out.entropy, out.statistic


@dataclass(frozen=True)
class PassPlan:
    """Which no-grad passes a step needs (fixed for a run)."""

    old: bool
    """A π_old pass before the update (several updates per step, a component reading π_old
    before the forward, ...)."""
    truncation: tuple[int, float, float] | None
    """(top_k, top_p, min_p) when the engine's log-probs are read and it truncated: log S_t."""
    collision: bool
    """log Σ_v π_old(v)² is read (``old_log_sum_sq_probs``)."""
    engine: bool
    """The engine's log-probs are read (a rollout correction, off-policy masks)."""

    def run(
        self,
        kernel: LogprobKernel,
        rows: RowTensors,
        micro_batch_size: int,
        reference: tuple[LogprobKernel, Context | None] | None,
    ) -> RolloutPasses:
        """The passes this plan names. One head statistic per pass: when both log S_t and
        log Σπ² are read, the second takes a pass of its own."""
        mass = collision = old = entropy = None
        squares = log_sum_sq_probs(kernel.temperature) if self.collision else None
        if self.truncation is not None:
            old, entropy, mass = old_pass(
                kernel, rows, micro_batch_size, kept_mass(kernel.temperature, *self.truncation)
            )
            if squares is not None:
                collision = old_pass(kernel, rows, micro_batch_size, squares)[2]
        elif self.old or squares is not None:
            old, entropy, collision = old_pass(kernel, rows, micro_batch_size, squares)
        ref = None
        if reference is not None:
            every = torch.arange(rows.num_rows, device=HOST)
            ref, _ = policy_logprobs(reference[0], rows, every, micro_batch_size, reference[1])
        engine = engine_logprobs(rows, mass, kernel.device) if self.engine else None
        return RolloutPasses(old, entropy, ref, engine, collision)


def engine_logprobs(rows: RowTensors, kept_mass: Tensor | None, device: torch.device) -> Tensor:
    """[R, W] the engine's log-probs of the SAMPLE rows' tokens on the trainer's scale.

    Both engines return the processed log-prob ℓ − log S_t (tempered, then top-k/top-p,
    renormalized over the kept tokens); the trainer's π_old is the tempered full-vocabulary ℓ.
    Adding log S_t compares like with like; without truncation S_t = 1 (``kept_mass`` None)."""
    sample = (rows.roles == int(Role.SAMPLE)).unsqueeze(-1) * rows.mask
    behaviour = rows.behaviour.to(device)
    if kept_mass is not None:
        behaviour = behaviour + kept_mass
    return behaviour * sample.to(device)
