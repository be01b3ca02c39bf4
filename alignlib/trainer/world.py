"""The data-parallel world a training process belongs to: its rank, the group's size, and the
few collectives the loop needs. One process (the default) is a world of size 1 where every
collective is the identity, so the single-process path runs the very same code.

Exactness across workers comes from one rule: every rank prepares the *whole* mini-batch (the
same rows, the same normalizers, group advantages and Clip-Cov/KL-Cov token selection — its
generator state is the same on every rank) and then runs only its share of the micro-batches.
The per-rank losses are normalized by the mini-batch's global counts, so the per-rank gradients
add up (all-reduce SUM) to exactly the single-process gradient.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    sharded: bool = False
    """FSDP2: parameters are sharded, so every rank must run every forward and backward
    (padding steps stand in for a rank without a micro-batch) and FSDP2 itself reduces the
    gradients."""
    rollout_scheduling: tuple[Any, ...] = ()
    """Ray scheduling strategies of the rollout workers rank 0 starts, one per worker (their
    bundles of the run's placement group, `distributed.placement`); empty: Ray places them."""

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates, checkpoints, generates and syncs rollout engines."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, items: list[Any]) -> list[Any]:
        """This rank's items of a list every rank holds (round-robin)."""
        return items[self.rank :: self.size] if self.distributed else items

    def padded_share(self, items: list[Any]) -> list[tuple[Any, bool]]:
        """(item, real) of this rank's share; with sharded parameters every rank gets the same
        count, a rank short of items repeating its first (``real`` False: run, then discard)."""
        mine = [(item, True) for item in self.share(items)]
        if not self.sharded or not items:
            return mine
        count = -(-len(items) // self.size)
        return mine + [(items[0], False)] * (count - len(mine))

    def sum_(self, tensor: Tensor) -> Tensor:
        """All-reduce SUM in place (each rank filled its own rows, zeros elsewhere)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_metrics(self, metrics: dict[str, float], device: torch.device) -> dict[str, float]:
        """Per-rank partial sums of micro-batch metrics → the mini-batch's totals."""
        if not self.distributed:
            return metrics
        # A rank with no micro-batch this step has no keys: agree on the union first.
        seen: list[list[str]] = [[] for _ in range(self.size)]
        dist.all_gather_object(seen, sorted(metrics))
        keys = sorted({key for names in seen for key in names})
        values = torch.tensor([metrics.get(k, 0.0) for k in keys], dtype=torch.float64)
        values = values.to(device)
        self.sum_(values)
        return dict(zip(keys, values.tolist(), strict=True))

    def broadcast(self, value: Any, device: torch.device) -> Any:
        """Rank 0's ``value`` on every rank (pickled; rollouts, rows, metrics)."""
        if not self.distributed:
            return value
        payload = pickle.dumps(value) if self.is_main else b""
        size = torch.tensor([len(payload)], dtype=torch.long, device=device)
        dist.broadcast(size, src=0)
        buffer = torch.zeros(int(size), dtype=torch.uint8, device=device)
        if self.is_main:
            buffer.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
        dist.broadcast(buffer, src=0)
        return value if self.is_main else pickle.loads(buffer.cpu().numpy().tobytes())

    def sync_gradients(self, model: nn.Module) -> None:
        """All-reduce SUM of every gradient, one flat bucket per dtype (what DDP's reducer does
        after an accumulation under ``no_sync``)."""
        if not self.distributed or self.sharded:  # FSDP2 reduce-scatters in the backward
            return
        params = [p for p in model.parameters() if p.requires_grad]
        # A parameter no rank touched keeps grad None (AdamW then skips it, as in one process).
        touched = torch.tensor(
            [p.grad is not None for p in params], dtype=torch.float32, device=params[0].device
        )
        self.sum_(touched)
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        for dtype in {p.grad.dtype for p in params}:
            group = [p.grad for p in params if p.grad.dtype == dtype]
            flat = torch.cat([g.reshape(-1) for g in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for grad in group:
                grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                offset += grad.numel()
        for param, used in zip(params, touched.tolist(), strict=True):
            if not used:
                param.grad = None

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = World()
