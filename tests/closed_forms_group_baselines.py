"""Independent float64 closed forms of OPO, GPG, max@k (verl's grpo_passk), PKPO and Pass@k
Training, written from the papers' definitions (and the authors' analytic form) as loops over
groups, rows and k-subsets, for test_gradient_identity.py; and batches of graded rewards with
ties, zeros, an all-equal group and a group of one row (groups of 4 or 7 rows, so k < n too)."""

from __future__ import annotations

import itertools
import math

import torch
from batches import rl_batch
from torch import Tensor

from alignlib.estimator import Batch

LEVELS = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)


def graded_batch(seed: int = 0) -> Batch:
    """5 groups: rewards drawn from {0, .25, .5, 1} (ties at the top happen), group 1 all 0.5
    (no signal), and row 19 alone in its group."""
    b = rl_batch(num_groups=5, group_size=4, width=9, seed=seed, spread=0.4)
    gen = torch.Generator().manual_seed(70 + seed)
    rewards = LEVELS[torch.randint(0, 4, (b.num_rows,), generator=gen)]
    rewards[4:8] = 0.5
    group_ids = b.group_ids.clone()
    group_ids[19] = 99
    return b.replace(rewards=rewards, group_ids=group_ids)


def wide_batch(seed: int = 0) -> Batch:
    """4 groups of 7 rows (k < n), graded rewards with ties, one group all equal."""
    b = rl_batch(num_groups=4, group_size=7, width=9, seed=seed, spread=0.4)
    gen = torch.Generator().manual_seed(90 + seed)
    rewards = LEVELS[torch.randint(0, 4, (b.num_rows,), generator=gen)]
    rewards[7:14] = 0.25
    return b.replace(rewards=rewards)


def groups(b: Batch) -> list[list[int]]:
    ids = b.group_ids.tolist()
    return [[i for i in range(len(ids)) if ids[i] == g] for g in sorted(set(ids))]


def std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def token_mean(per_token: Tensor, m: Tensor) -> Tensor:
    return (per_token * m).sum() / m.sum()


def clipped_token_mean(b: Batch, adv: list[float], eps: float = 0.2) -> Tensor:
    a = torch.tensor(adv, dtype=torch.float64).unsqueeze(-1)
    ratio = torch.exp(b.logprobs - b.old_logprobs)
    loss = torch.maximum(-ratio * a, -ratio.clamp(1 - eps, 1 + eps) * a)
    return token_mean(loss, b.mask)


def opo_advantages(b: Batch) -> list[float]:
    """R_i − Σ_j |y_j| R_j / Σ_j |y_j| in the group; a group of one: baseline 0."""
    r, lengths = b.rewards.tolist(), b.mask.sum(-1).tolist()
    adv = [0.0] * len(r)
    for members in groups(b):
        baseline = 0.0
        if len(members) > 1:
            baseline = sum(lengths[j] * r[j] for j in members) / sum(lengths[j] for j in members)
        for i in members:
            adv[i] = r[i] - baseline
    return adv


def closed_opo(b: Batch) -> Tensor:
    return clipped_token_mean(b, opo_advantages(b))


def gpg_advantages(b: Batch, alpha: str = "valid_groups", scale: bool = False) -> list[float]:
    """α (R − mean_group) [/ (std_group + 1e-4)], α = B / #rows counted (groups of one: 0)."""
    r = b.rewards.tolist()
    if alpha == "valid_groups":
        counted = sum(len(m) for m in groups(b) if max(r[i] for i in m) > min(r[i] for i in m))
    else:
        counted = sum(1 for v in r if v != 0)
    a = len(r) / max(counted, 1)
    adv = [0.0] * len(r)
    for members in groups(b):
        if len(members) < 2:
            continue
        values = [r[i] for i in members]
        mean = sum(values) / len(values)
        for i in members:
            adv[i] = a * (r[i] - mean) / ((std(values) + 1e-4) if scale else 1.0)
    return adv


def closed_gpg(
    b: Batch, alpha: str = "valid_groups", scale: bool = False, beta: float = 0.0
) -> Tensor:
    """Token-mean of −Â·log π (+ β·k3 to π_ref, token-mean)."""
    a = torch.tensor(gpg_advantages(b, alpha, scale), dtype=torch.float64).unsqueeze(-1)
    log_ratio = b.ref_logprobs - b.logprobs
    k3 = torch.exp(log_ratio) - log_ratio - 1
    return token_mean(-a * b.logprobs + beta * k3, b.mask)


def passk_advantages(b: Batch, scale: bool = True) -> list[float]:
    """The leave-one-out estimator of E[max R]: max(R) − max(R without row i), per row."""
    r = b.rewards.tolist()
    adv = [0.0] * len(r)
    for members in groups(b):
        if len(members) < 2:
            continue
        top = max(r[i] for i in members)
        values = [r[i] for i in members]
        for i in members:
            adv[i] = top - max(r[j] for j in members if j != i)
            if scale:
                adv[i] /= std(values) + 1e-6
    return adv


def closed_passk(b: Batch, scale: bool = True) -> Tensor:
    return clipped_token_mean(b, passk_advantages(b, scale))


def pkpo_advantages(b: Batch, k: int) -> list[float]:
    """PKPO eq. 33 by brute force: over every k-subset I of the group holding row i, the best
    of I minus the best of I without i, divided by C(n, k) (k capped at the group's size)."""
    r = b.rewards.tolist()
    adv = [0.0] * len(r)
    for members in groups(b):
        size = min(k, len(members))
        if len(members) < 2:
            continue
        for subset in itertools.combinations(members, size):
            for i in subset:
                rest = [r[j] for j in subset if j != i]
                adv[i] += max(r[j] for j in subset) - max(rest)
        for i in members:
            adv[i] /= math.comb(len(members), size)
    return adv


def closed_pkpo(b: Batch, k: int = 4) -> Tensor:
    return clipped_token_mean(b, pkpo_advantages(b, k))


def passk_training_binary(b: Batch, k: int) -> list[float]:
    """The authors' analytic form for 0/1 rewards: ρ = 1 − C(n−c, k)/C(n, k), σ = sqrt(ρ(1−ρ)),
    (1 − ρ)/(σ + 1e-6) on right rows, (1 − ρ − C(n−c−1, k−1)/C(n−1, k−1))/(σ + 1e-6) on wrong."""
    r = b.rewards.tolist()
    adv = [0.0] * len(r)
    for members in groups(b):
        n, c = len(members), sum(1 for i in members if r[i] == 1)
        rho = 1 - math.comb(n - c, k) / math.comb(n, k)
        sigma = math.sqrt(rho * (1 - rho))
        wrong = 1 - rho - math.comb(n - c - 1, k - 1) / math.comb(n - 1, k - 1) if c < n else 0
        for i in members:
            adv[i] = ((1 - rho) if r[i] == 1 else wrong) / (sigma + 1e-6)
    return adv


def passk_training_subsets(b: Batch, k: int) -> list[float]:
    """By brute force over k-subsets (k capped at the group's size): r̃_i the mean best reward of
    the subsets holding i, ρ the mean best of all subsets, (r̃_i − ρ)/(sqrt(ρ(1 − ρ)) + 1e-6)."""
    r = b.rewards.tolist()
    adv = [0.0] * len(r)
    for members in groups(b):
        if len(members) < 2:
            continue
        subsets = list(itertools.combinations(members, min(k, len(members))))
        rho = sum(max(r[j] for j in s) for s in subsets) / len(subsets)
        for i in members:
            holding = [max(r[j] for j in s) for s in subsets if i in s]
            adv[i] = (sum(holding) / len(holding) - rho) / (math.sqrt(rho * (1 - rho)) + 1e-6)
    return adv


CASES = {
    "opo": (graded_batch, closed_opo, {}),
    "gpg": (graded_batch, closed_gpg, {}),
    "gpg_std": (graded_batch, lambda b: closed_gpg(b, scale=True), {"std": True}),
    "gpg_verl_alpha": (
        graded_batch,
        lambda b: closed_gpg(b, alpha="nonzero_rewards"),
        {"alpha": "nonzero_rewards"},
    ),
    "gpg_kl": (
        graded_batch,
        lambda b: closed_gpg(b, beta=0.04),
        {"kl_coef": 0.04},
    ),
    "grpo_passk": (graded_batch, closed_passk, {}),
    "grpo_passk_unscaled": (graded_batch, lambda b: closed_passk(b, scale=False), {"std": False}),
    "pkpo": (wide_batch, closed_pkpo, {}),
    "pkpo_k2": (wide_batch, lambda b: closed_pkpo(b, k=2), {"k": 2}),
    "pkpo_k5_graded": (graded_batch, lambda b: closed_pkpo(b, k=5), {"k": 5}),
    "passk_training": (
        rl_batch,
        lambda b: clipped_token_mean(b, passk_training_binary(b, 4)),
        {},
    ),
    "passk_training_k2": (
        rl_batch,
        lambda b: clipped_token_mean(b, passk_training_binary(b, 2)),
        {"k": 2},
    ),
    "passk_training_graded": (
        wide_batch,
        lambda b: clipped_token_mean(b, passk_training_subsets(b, 3)),
        {"k": 3},
    ),
}
VARIANTS = {
    "gpg_std": "gpg",
    "gpg_verl_alpha": "gpg",
    "gpg_kl": "gpg",
    "grpo_passk_unscaled": "grpo_passk",
    "pkpo_k2": "pkpo",
    "pkpo_k5_graded": "pkpo",
    "passk_training_k2": "passk_training",
    "passk_training_graded": "passk_training",
}
