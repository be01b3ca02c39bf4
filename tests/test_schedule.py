"""The learning-rate schedule equals transformers.get_scheduler's after warm-up; during warm-up
it skips transformers' lr-0 first step (the reason it is not get_scheduler itself)."""

from __future__ import annotations

import pytest
import torch
from transformers import get_scheduler

from alignlib.config.schema import OptimConfig
from alignlib.trainer.build import build_optimizer

HF_NAMES = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant_with_warmup",
    "inverse_sqrt": "inverse_sqrt",
}


def factors(scheduler, optimizer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("schedule", sorted(HF_NAMES))
def test_after_warmup_the_schedule_is_transformers(schedule: str) -> None:
    total, lr = 20, 1e-3
    config = OptimConfig(lr=lr, schedule=schedule, warmup_ratio=0.2)
    ours_opt, ours = build_optimizer([torch.nn.Parameter(torch.zeros(1))], config, total)
    hf_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    hf = get_scheduler(HF_NAMES[schedule], hf_opt, num_warmup_steps=4, num_training_steps=total)
    mine, theirs = factors(ours, ours_opt, total), factors(hf, hf_opt, total)
    assert mine[4:] == pytest.approx(theirs[4:], rel=1e-12, abs=1e-15)
    assert theirs[0] == 0.0 and mine[0] == pytest.approx(lr / 5)  # no lr-0 first step
