"""Per-position statistics of the LM head's logits, read by a forward hook as the kernel runs
(``LogprobKernel.__call__(statistic=...)``): the log-mass a top-k/top-p engine kept (a rollout
correction's log S_t, in the no-grad old pass) and log Σ_v π(v)² (WPO's weights, from the
training forward itself, as TRL's fused head gives them). A hooked head is called per chunk of
positions (``token_logprobs``' module path, padded: ``LogprobKernel.pack_mode``), so the
chunks concatenate to the scored positions, and no [T, V] logits tensor is kept."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from alignlib.estimator import kept_log_mass

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

    def columns(self, rows: int, width: int, device: torch.device) -> Tensor:
        """[rows, width] what the forward's chunks recorded, right-aligned (they cover the
        positions from the first scored one to the row end), 0 before."""
        out = torch.zeros(rows, width, device=device)
        if self.parts:
            values = torch.cat(self.parts, dim=1)
            out[:, width - values.shape[1] :] = values
        return out


@contextmanager
def hooked(model: nn.Module, reduce: Reduce) -> Iterator[HeadHook]:
    """``model``'s LM head hooked with ``reduce`` for the duration."""
    hook = HeadHook(reduce)
    handle = model.get_output_embeddings().register_forward_hook(hook)  # type: ignore[operator]
    try:
        yield hook
    finally:
        handle.remove()


def kept_mass(temperature: float, top_k: int, top_p: float, min_p: float = 0.0) -> Reduce:
    """log S_t: the tempered mass an engine's min-p / top-k / top-p truncation kept."""
    return lambda logits: kept_log_mass(logits, temperature, top_k, top_p, min_p)


def log_sum_sq_probs(temperature: float) -> Reduce:
    """log Σ_v π(v)², π the tempered softmax (in at least fp32)."""

    def reduce(logits: Tensor) -> Tensor:
        tempered = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
        return torch.logsumexp(2 * torch.log_softmax(tempered, dim=-1), dim=-1)

    return reduce
