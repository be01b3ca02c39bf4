"""GiGPO (Feng et al. 2025, arXiv 2505.10978, eqs. 3, 5–8) written turn by turn in float64 for
test_gradient_identity.py, on multi-turn rows: turns of sampled tokens with environment tokens
between them, each turn's anchor state, turn rewards on some turn ends, an outcome on top;
states shared within a group and reused, with other meanings, in other groups."""

from __future__ import annotations

import random

import torch
from batches import DTYPE, leaf, logprob_like
from torch import Tensor

from alignlib.estimator import Batch

GROUPS, SIZE, WIDTH = 3, 4, 16
EPS_STD = 1e-6


def turn_layout(rng: random.Random) -> list[tuple[int, int]]:
    """(first token, last token) of each turn of one row: 1 to 3 turns of 1 to 3 tokens, one
    or two environment tokens between them, after a prompt of 2 positions."""
    turns, position = [], 2
    for _ in range(rng.randint(1, 3)):
        length = rng.randint(1, 3)
        turns.append((position, position + length - 1))
        position += length + rng.randint(1, 2)
    return turns


def agent_batch(seed: int = 0) -> Batch:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    rows = GROUPS * SIZE
    logprobs = logprob_like(rows, WIDTH, gen)
    mask = torch.zeros(rows, WIDTH, dtype=DTYPE)
    states = torch.full((rows, WIDTH), -1, dtype=torch.long)
    turn_rewards = torch.zeros(rows, WIDTH, dtype=DTYPE)
    ends = torch.zeros(rows, WIDTH, dtype=DTYPE)
    rewards = torch.zeros(rows, dtype=DTYPE)
    for i in range(rows):
        for k, (first, last) in enumerate(turn_layout(rng)):
            mask[i, first : last + 1] = 1
            # turn 1 acts from the task's prompt (one state per group); later turns from one
            # of three observations, whose ids recur across groups
            states[i, last] = 7 if k == 0 else rng.choice([11, 12, 13])
            if rng.random() < 0.5:
                turn_rewards[i, last] = rng.choice([-0.5, 0.25, 1.0])
                ends[i, last] = 1
        rewards[i] = turn_rewards[i].sum() + rng.choice([0.0, 1.0])
    return Batch(
        logprobs=leaf(logprobs),
        mask=mask,
        old_logprobs=logprobs + 0.3 * torch.randn(rows, WIDTH, generator=gen, dtype=DTYPE),
        ref_logprobs=logprob_like(rows, WIDTH, gen),
        entropy=leaf(torch.rand(rows, WIDTH, generator=gen, dtype=DTYPE) * 3),
        rewards=rewards,
        group_ids=torch.arange(rows) // SIZE,
        step_rewards=turn_rewards,
        step_ends=ends,
        step_states=states,
    )


def turns_of(b: Batch, i: int) -> list[list[int]]:
    """Row i's turns: runs of consecutive masked tokens."""
    out: list[list[int]] = []
    for t in range(WIDTH):
        if b.mask[i, t] == 1:
            if out and out[-1][-1] == t - 1:
                out[-1].append(t)
            else:
                out.append([t])
    return out


def stats(values: list[float]) -> tuple[float, float]:
    """(mean, unbiased std; 0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def gigpo_advantages(
    b: Batch, gamma: float = 0.95, omega: float = 1.0, std: bool = True, per_step: bool = False
) -> dict[tuple[int, int], float]:
    """{(row, token): A^E + ω·A^S}, by loops over groups, rows and turns."""
    rows = range(b.num_rows)
    turns = {i: turns_of(b, i) for i in rows}
    group = {i: int(b.group_ids[i]) for i in rows}
    reward = {i: float(b.rewards[i]) for i in rows}
    returns: dict[tuple[int, int], float] = {}
    for i in rows:
        own = [float(b.step_rewards[i, turn[-1]]) for turn in turns[i]]
        own[-1] += reward[i] - sum(own)  # the outcome belongs to the last step
        for k in range(len(own)):
            returns[i, k] = sum(gamma ** (j - k) * own[j] for j in range(k, len(own)))
    state = {
        (i, k): int(b.step_states[i, turn[-1]]) for i in rows for k, turn in enumerate(turns[i])
    }

    def norm(value: float, pool: list[float]) -> float:
        mean, spread = stats(pool)
        return (value - mean) / (spread + EPS_STD) if std else value - mean

    out = {}
    for i in rows:
        pool = [
            reward[j] for j in rows if group[j] == group[i] for _ in (turns[j] if per_step else [0])
        ]
        episode = norm(reward[i], pool)
        for k, turn in enumerate(turns[i]):
            mates = [
                returns[j, m]
                for j in rows
                for m in range(len(turns[j]))
                if group[j] == group[i] and state[j, m] == state[i, k]
            ]
            step = norm(returns[i, k], mates)
            for t in turn:
                out[i, t] = episode + omega * step
    return out


def closed_gigpo(b: Batch, std: bool = True, per_step: bool = False, omega: float = 1.0) -> Tensor:
    """Token-mean of PPO's clipped loss (dual clip 3) with GiGPO's Â, + 0.01·k3 − 0.001·H."""
    adv = gigpo_advantages(b, std=std, per_step=per_step, omega=omega)
    total = torch.zeros((), dtype=torch.float64)
    for (i, t), a in adv.items():
        ratio = torch.exp(b.logprobs[i, t] - b.old_logprobs[i, t])
        loss = torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.2))
        if a < 0:
            loss = torch.minimum(loss, torch.tensor(-3.0 * a, dtype=torch.float64))
        log_q = b.ref_logprobs[i, t] - b.logprobs[i, t]
        total = total + loss + 0.01 * (torch.exp(log_q) - log_q - 1) - 0.001 * b.entropy[i, t]
    return total / len(adv)


CASES = {
    "gigpo": (agent_batch, closed_gigpo, {}),
    "gigpo_released": (agent_batch, lambda b: closed_gigpo(b, per_step=True), {"form": "released"}),
    "gigpo_mean_norm": (
        agent_batch,
        lambda b: closed_gigpo(b, std=False, omega=0.5),
        {"std": False, "step_weight": 0.5},
    ),
}
VARIANTS = {"gigpo_released": "gigpo", "gigpo_mean_norm": "gigpo"}
