"""What the side-by-side benchmarks share on a GPU: waiting for queued kernels before a clock
is read, and the peak CUDA memory one trainer's run allocates."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any, TypeVar

import torch

Result = TypeVar("Result")


def synchronize(device: str) -> None:
    """Wait for the GPU's queued kernels (a CPU runs none), so a timer reads finished work."""
    if device != "cpu":
        torch.cuda.synchronize()


def with_peak_memory(
    device: str, run: Callable[..., Result], *args: Any
) -> tuple[Result, float | None]:
    """(``run(*args)``, the GiB it allocated at its peak on a GPU; None on a CPU).

    The previous side's trainer may sit in a reference cycle: collected first, and whatever it
    still holds is subtracted, so each side's peak is its own."""
    if device == "cpu":
        return run(*args), None
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    left_over = torch.cuda.memory_allocated()
    result = run(*args)
    return result, (torch.cuda.max_memory_allocated() - left_over) / 2**30


def peak_text(peak: float | None, separator: str = ", ") -> str:
    """``", peak X GiB"`` for a GPU run's peak, nothing for a CPU run."""
    return "" if peak is None else f"{separator}peak {peak:.2f} GiB"
