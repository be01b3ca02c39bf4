"""Float64 closed form of process-supervised GRPO (DeepSeekMath §4.1.3), written from the paper
with explicit loops: each completion's steps end at the given step ends and at its last token
(which also takes the reward no step carries, R − Σ steps); r̃ = (r − mean) / (std + ε) over all
step rewards of the group (unbiased std); Â_{i,t} = Σ over the row's steps ending at or after t
of r̃; then GRPO's clipped per-token loss in a per-sequence token mean."""

from __future__ import annotations

import torch
from batches import DTYPE, rl_batch
from torch import Tensor

from alignlib.estimator import Batch


def process_batch(seed: int = 0, steps: bool = True) -> Batch:
    """RL rows with step rewards on a few valid tokens each; R = Σ steps + a binary outcome."""
    b = rl_batch(num_groups=3, group_size=4, width=10, seed=seed, spread=0.5)
    if not steps:
        return b
    gen = torch.Generator().manual_seed(50 + seed)
    ends = (torch.rand(b.mask.shape, generator=gen) < 0.3) & (b.mask > 0)
    values = torch.randn(b.mask.shape, generator=gen, dtype=DTYPE) * ends
    return b.replace(
        step_rewards=values, step_ends=ends.to(DTYPE), rewards=b.rewards + values.sum(-1)
    )


def process_advantages(b: Batch, std: bool = True, eps: float = 1e-6) -> Tensor:
    rows, width = b.mask.shape
    steps: dict[int, list[tuple[int, int, float]]] = {}  # group -> (row, end, reward)
    for i in range(rows):
        tokens = [t for t in range(width) if b.mask[i, t] > 0]
        given = [t for t in tokens if b.step_ends is not None and b.step_ends[i, t] > 0]
        carried = sum(float(b.step_rewards[i, t]) for t in given) if given else 0.0
        ends = sorted(set(given) | {tokens[-1]})
        for t in ends:
            r = float(b.step_rewards[i, t]) if t in given else 0.0
            if t == tokens[-1]:
                r += float(b.rewards[i]) - carried
            steps.setdefault(int(b.group_ids[i]), []).append((i, t, r))
    adv = torch.zeros(rows, width, dtype=DTYPE)
    for group in steps.values():
        if len({i for i, _, _ in group}) < 2:
            continue
        r = torch.tensor([v for _, _, v in group], dtype=DTYPE)
        mean, spread = r.mean(), r.std(unbiased=True)
        for i, end, value in group:
            normalized = (value - mean) / (spread + eps) if std else value - mean
            for t in range(width):
                if b.mask[i, t] > 0 and t <= end:
                    adv[i, t] += normalized
    return adv


def closed_grpo_process(b: Batch, std: bool = True) -> Tensor:
    adv = process_advantages(b, std)
    ratio = torch.exp(b.logprobs - b.old_logprobs)
    loss = torch.maximum(-ratio * adv, -ratio.clamp(0.8, 1.2) * adv)
    return ((loss * b.mask).sum(-1) / b.mask.sum(-1)).mean()


CASES = {
    "grpo_process": (process_batch, closed_grpo_process, {}),
    "grpo_process_no_std": (process_batch, lambda b: closed_grpo_process(b, False), {"std": False}),
    "grpo_process_outcome_only": (
        lambda seed=0: process_batch(seed, steps=False),
        closed_grpo_process,
        {},
    ),
}
VARIANTS = {
    "grpo_process_no_std": "grpo_process",
    "grpo_process_outcome_only": "grpo_process",
}
