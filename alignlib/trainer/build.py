"""Config → optimizer and learning-rate schedule (the estimator: alignlib.config.estimator)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from alignlib.config.schema import OptimConfig


def build_optimizer(
    params: list[torch.nn.Parameter], config: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """AdamW with linear warm-up then a cosine, linear, inverse-square-root or constant schedule.

    After warm-up the factors equal `transformers.get_scheduler`'s (cosine, linear,
    inverse_sqrt, constant_with_warmup; tests/test_schedule.py checks it). Warm-up differs on
    purpose: transformers starts at step/warmup = 0, so the first optimizer step has lr 0 and
    changes nothing (with the CPU configs' 12 steps and 10% warm-up, one step in twelve
    wasted); this one starts at (step + 1)/(warmup + 1). It is a LambdaLR either way, so
    checkpoints and resume's `apply_optim` (which recomputes through `lr_lambdas`) are
    unaffected."""
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    warmup = int(config.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.schedule == "constant":
            return 1.0
        if config.schedule == "inverse_sqrt":  # 1/√(step/warm-up), as transformers'
            timescale = warmup or 10_000
            return 1.0 / math.sqrt((step + timescale - warmup) / timescale)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return optimizer, LambdaLR(optimizer, factor)
