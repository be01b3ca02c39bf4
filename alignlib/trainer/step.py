"""The micro-batch kernel — the one place a training row meets the device — and the optimizer
step that follows a mini-batch's accumulated gradients.

Every forward over training rows goes through :class:`LogprobKernel`: the offline reference
cache, the offline update, the online old / reference log-probs and the online update. It
slices the rows of one micro-batch out of the host-side padded tensors, narrows them to the
micro-batch's longest row, moves them to the policy's device, and runs the policy under the
run's precision (bf16 autocast for ``bf16-mixed``); log-softmax and everything after it stay
in fp32. No call site moves a tensor itself, so none can forget to.

With ``train.packing`` the kernel instead forwards the micro-batch padding-free (its rows
concatenated, position ids restarting per row: ``alignlib.trainer.packing``) and returns the
same [r, w] layout, so nothing downstream changes; ``train.max_tokens_per_micro_batch`` makes
its no-grad passes (and the sources' micro-batches, through :meth:`LogprobKernel.batching`)
hold at most that many tokens.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from alignlib.console import warn
from alignlib.device import HOST, Placement
from alignlib.trainer.forward import PolicyLogprobs
from alignlib.trainer.head_hooks import Reduce, hooked
from alignlib.trainer.logprobs import first_masked_position
from alignlib.trainer.packing import (
    MicroBatching,
    PackingMode,
    decoder_kwargs,
    head_is_hooked,
    pack,
    packing_mode,
    unpack,
)
from alignlib.trainer.scores import scalar_head
from alignlib.trainer.world import SINGLE, World

Context = Callable[[], AbstractContextManager]
"""A context that changes which policy the model computes (e.g. the LoRA adapter disabled)."""


@dataclass(frozen=True)
class HostRows:
    """Right-padded rows on the host; the kernel moves the slices it needs."""

    input_ids: Tensor
    """[R, W] token ids (padding where ``attention`` is 0)."""
    attention: Tensor
    """[R, W] 1 on real tokens."""
    scored: Tensor
    """[R, W] 1 where a log-prob will be read (completion tokens): the LM head starts at the
    first such column of each micro-batch."""
    targets: Tensor | None = None
    """[R, W] the token each position is scored against where it is not the input token (a
    process reward model's label at a step's tag); None: the input tokens."""

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]


@dataclass(frozen=True)
class MicroLogprobs:
    logprobs: Tensor
    """[r, w] log π of each token on the kernel's device (fp32, or fp64 for a fp64 model);
    with gradient unless the kernel ran with ``grad=False``. Padded: every column from the
    micro-batch's first scored one (padding columns too: never read); packed: exactly the
    scored tokens. 0 elsewhere."""
    entropy: Tensor | None
    """[r, w] entropy per position, when asked for."""
    width: int
    """w: the longest row of the micro-batch (all its tokens fit)."""
    statistic: Tensor | None = None
    """[r, w] a statistic of the LM head's logits at each scored position (no gradient), when
    asked for (``head_hooks``: WPO's log Σπ², a rollout correction's log S_t)."""


@dataclass(frozen=True)
class LogprobKernel:
    """Log-probs (and entropy) of a policy over micro-batches of host rows."""

    model: nn.Module
    placement: Placement
    chunk_size: int = 256
    """Positions per LM-head chunk (no full fp32 [T, V] tensor)."""
    temperature: float = 1.0
    """Logits are divided by it (online: the sampling temperature)."""
    world: World = SINGLE
    """Data-parallel workers: no-grad passes over many rows are split among them."""
    module: nn.Module | None = None
    """The (FSDP2-sharded) :class:`PolicyLogprobs` of ``model`` to call, when there is one."""
    packing: bool = False
    """Forward each micro-batch padding-free (``train.packing``) where the model supports it
    (else padded, with one warning)."""
    max_tokens: int | None = None
    """Tokens per no-grad pass (``train.max_tokens_per_micro_batch``) instead of a row count."""
    values: bool = False
    """``model`` is a critic: its one-output head's V(s_t) of every token, in place of log π."""

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def pack_mode(self) -> PackingMode | None:
        """How micro-batches run packed (``packing.packing_mode``), or None for padded: not
        asked for, not supported (one warning), or a hook on the LM head reads the padded
        layout (the kept-mass pass: padded, silently). A reward model has no LM head: it
        packs as a language model does."""
        if not self.packing:
            return None
        if scalar_head(self.model) is None and head_is_hooked(self.model):
            return None
        mode, why = packing_mode(self.model, self.device, self.module is not None)
        if mode is None and why not in _WARNED:
            _WARNED.add(why)
            warn(f"train.packing: running padded rows instead, because {why}")
        return mode

    def batching(self, size: int) -> MicroBatching:
        """Micro-batches of ``size`` units, or by the token budget, as this kernel counts them."""
        return MicroBatching(size, self.max_tokens, self.pack_mode is not None)

    def __call__(
        self,
        rows: HostRows,
        indices: Tensor,
        *,
        with_entropy: bool = False,
        grad: bool = True,
        context: Context | None = None,
        statistic: Reduce | None = None,
    ) -> MicroLogprobs:
        """Forward the rows ``indices`` ([r] host long tensor) of ``rows`` as one micro-batch.

        ``grad=False`` runs without autograd (old, reference and cached log-probs);
        ``context`` runs the model as another policy (adapter off); ``statistic`` also reads
        that of the LM head's logits at each position (a hooked head: padded).
        """
        if statistic is None:
            return self._forward(rows, indices, with_entropy, grad, context)
        with hooked(self.model, statistic) as hook:
            out = self._forward(rows, indices, with_entropy, grad, context)
        columns = hook.columns(out.logprobs.shape[0], out.width, self.device)
        return dataclasses.replace(out, statistic=columns)

    def _forward(
        self,
        rows: HostRows,
        indices: Tensor,
        with_entropy: bool,
        grad: bool,
        context: Context | None,
    ) -> MicroLogprobs:
        with (
            torch.set_grad_enabled(grad),
            context() if context is not None else nullcontext(),
            self.placement.autocast(),
        ):
            forward = (
                self.module if self.module is not None else PolicyLogprobs(self.model, self.values)
            )
            mode = self.pack_mode
            if mode is not None:
                return self._packed(forward, mode, rows, indices, with_entropy)
            width = int(rows.attention[indices].sum(-1).max())
            ids = rows.input_ids[indices, :width].to(self.device, non_blocking=True)
            attention = rows.attention[indices, :width].to(self.device, non_blocking=True)
            # Read on the host: no device sync, and the prompt columns skip the LM head.
            first = first_masked_position(rows.scored[indices, :width])
            targets = None
            if rows.targets is not None:
                targets = rows.targets[indices, :width].to(self.device, non_blocking=True)
            logprobs, entropy = forward(
                ids, attention, self.chunk_size, with_entropy, self.temperature, first,
                targets=targets,
            )  # fmt: skip
        return MicroLogprobs(logprobs, entropy, width)

    def _packed(
        self,
        forward: nn.Module,
        mode: PackingMode,
        rows: HostRows,
        indices: Tensor,
        with_entropy: bool,
    ) -> MicroLogprobs:
        """The rows as one padding-free [1, Σ lengths] sequence, unpacked to [r, w]."""
        scorer = scalar_head(self.model) is not None and not self.values  # reads row ends
        targets = None if rows.targets is None else rows.targets[indices]
        packed = pack(
            rows.input_ids[indices], rows.attention[indices], rows.scored[indices], scorer, targets
        )
        ids, positions, scored = (
            t.to(self.device, non_blocking=True)
            for t in (packed.input_ids, packed.position_ids, packed.scored)
        )
        # As many LM-head positions per chunk as the padded path's chunk of every row.
        chunk = self.chunk_size * packed.num_rows
        extra = decoder_kwargs(mode, packed, self.device)
        if packed.targets is not None:
            extra["targets"] = packed.targets.to(self.device, non_blocking=True)
        logps, ents = forward(
            ids, None, chunk, with_entropy, self.temperature, 0, positions, scored, **extra
        )
        width = packed.max_length
        entropy = None if ents is None else unpack(ents, packed, width)
        return MicroLogprobs(unpack(logps, packed, width), entropy, width)

    @torch.no_grad()
    def all_rows(
        self,
        rows: HostRows,
        micro_batch_size: int,
        *,
        with_entropy: bool = False,
        context: Context | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """([R, W] log-probs, entropy when asked for) of every row: :meth:`every_row`'s."""
        out = self.every_row(rows, micro_batch_size, with_entropy=with_entropy, context=context)
        return out.logprobs, out.entropy

    def every_row(
        self,
        rows: HostRows,
        micro_batch_size: int,
        *,
        with_entropy: bool = False,
        context: Context | None = None,
        statistic: Reduce | None = None,
    ) -> MicroLogprobs:
        """[R, W] log-probs of every row, and its entropy and ``statistic`` of the LM head's
        logits when asked for, no gradient, in eval mode (no dropout: the behaviour policy is
        the deterministic one that sampled), on the device; each rank its share, summed."""
        shape = rows.input_ids.shape
        logprobs = torch.zeros(shape, device=self.device)
        entropy = torch.zeros(shape, device=self.device) if with_entropy else None
        stat = torch.zeros(shape, device=self.device) if statistic is not None else None
        was_training = self.model.training
        self.model.eval()
        chunks = self.passes(rows, micro_batch_size)
        try:
            for chunk, real in self.world.padded_share(chunks):
                out = self(
                    rows, chunk, with_entropy=with_entropy, grad=False, context=context,
                    statistic=statistic,
                )  # fmt: skip
                if not real:  # a sharded model needs every rank in every forward
                    continue
                target = chunk.to(self.device)
                logprobs[target, : out.width] = out.logprobs.float()
                for whole, part in ((entropy, out.entropy), (stat, out.statistic)):
                    if whole is not None and part is not None:
                        whole[target, : out.width] = part.float()
        finally:
            self.model.train(was_training)
            # FSDP2 keeps the root unit gathered after a forward (a backward would reshard it):
            # without one, reshard now, or the optimizer's (sharded) parameters are not the
            # module's until the next backward.
            reshard = getattr(self.module, "reshard", None)
            if reshard is not None:
                reshard()
        for tensor in (logprobs, entropy, stat):
            if tensor is not None:
                self.world.sum_(tensor)
        return MicroLogprobs(logprobs, entropy, shape[1], stat)

    def passes(self, rows: HostRows, micro_batch_size: int) -> list[Tensor]:
        """Row indices of each no-grad pass over every row: ``micro_batch_size`` rows at a
        time, or as many as the token budget holds."""
        units = list(torch.arange(rows.num_rows, device=HOST).split(1))
        return self.batching(micro_batch_size).split(units, rows.attention.sum(-1))


_WARNED: set[str] = set()
"""Reasons for not packing already announced (once per process, not per micro-batch)."""

NonFinite = Literal["stop", "skip"]


class NonFiniteError(ValueError):
    """A loss or gradient became NaN/inf and the run's policy is to stop (a ValueError: the
    CLI reports it as one line, like every error the user can fix)."""


@dataclass
class OptimizerStep:
    """Clip, then step — or skip a step whose gradient is not finite (``train.nonfinite``)."""

    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    grad_clip: float | None = None
    skip_grad_norm: float | None = None
    """Skip steps whose gradient norm exceeds this (HPT's rule); None never skips."""
    nonfinite: NonFinite = "stop"
    skipped: int = 0
    """Steps skipped for a non-finite gradient so far."""
    taken: int = 0
    """Optimizer steps actually applied so far."""

    def __call__(self, step: int) -> dict[str, float]:
        limit = self.grad_clip if self.grad_clip is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, limit)
        full = getattr(norm, "full_tensor", None)  # FSDP2: a DTensor over the shards
        grad_norm = float(full() if full is not None else norm)
        finite = math.isfinite(grad_norm)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            if self.nonfinite == "stop":
                raise NonFiniteError(
                    f"step {step}: the gradient norm is {grad_norm} (a NaN/inf loss, reward or "
                    "advantage); lower optim.lr, check the rewards, or set train.nonfinite=skip "
                    "to skip such steps"
                )
            self.skipped += 1
            warn(
                f"step {step}: non-finite gradient norm ({grad_norm}); step skipped "
                f"({self.skipped} so far, train.nonfinite: skip)"
            )
        too_large = self.skip_grad_norm is not None and grad_norm > self.skip_grad_norm
        if finite and not too_large:
            self.optimizer.step()
            self.taken += 1
        with warnings.catch_warnings():  # a skipped step still advances the schedule
            warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        skip = not finite or too_large
        return {"grad_norm": grad_norm, "skipped_steps": float(skip)}

    def check_trained(self, attempted: int) -> None:
        """A run whose every step was skipped trained nothing: fail rather than save it."""
        if attempted > 0 and self.taken == 0:
            raise NonFiniteError(
                f"all {attempted} optimizer steps were skipped (non-finite or too-large "
                "gradients), so the model is untrained and final/ was not written; check the "
                "rewards and losses for NaN, lower optim.lr or raise online.skip_grad_norm"
            )
