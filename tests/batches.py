"""Random float64 batches for estimator tests: leaf log-probs, ragged masks, groups, pairs."""

from __future__ import annotations

import torch
from torch import Tensor

from alignlib.estimator import Batch, Role

DTYPE = torch.float64


def ragged_mask(rows: int, width: int, gen: torch.Generator, prompt: int = 2) -> Tensor:
    """Completion mask: ``prompt`` leading zeros, then a random length ≥ 1, then padding."""
    mask = torch.zeros(rows, width, dtype=DTYPE)
    for i in range(rows):
        length = int(torch.randint(1, width - prompt + 1, (1,), generator=gen))
        mask[i, prompt : prompt + length] = 1
    return mask


def logprob_like(rows: int, width: int, gen: torch.Generator) -> Tensor:
    return -torch.nn.functional.softplus(torch.randn(rows, width, generator=gen, dtype=DTYPE))


def leaf(values: Tensor) -> Tensor:
    return values.clone().requires_grad_(True)


def rl_batch(
    num_groups: int = 4, group_size: int = 4, width: int = 9, seed: int = 0, spread: float = 0.3
) -> Batch:
    """SAMPLE rows in groups with binary rewards; old log-probs differ enough to clip."""
    gen = torch.Generator().manual_seed(seed)
    rows = num_groups * group_size
    logprobs = logprob_like(rows, width, gen)
    old = logprobs + spread * torch.randn(rows, width, generator=gen, dtype=DTYPE)
    rewards = torch.randint(0, 2, (rows,), generator=gen).to(DTYPE)
    rewards[:group_size] = 1.0  # one fully solved group: zero GRPO advantage
    return Batch(
        logprobs=leaf(logprobs),
        mask=ragged_mask(rows, width, gen),
        old_logprobs=old,
        ref_logprobs=logprob_like(rows, width, gen),
        entropy=leaf(torch.rand(rows, width, generator=gen, dtype=DTYPE) * 3),
        rewards=rewards,
        group_ids=torch.arange(rows) // group_size,
    )


def pair_batch(num_pairs: int = 6, width: int = 9, seed: int = 0, gold: bool = False) -> Batch:
    """[chosen; rejected (; gold)] rows sharing pair ids, with ref and previous log-probs."""
    gen = torch.Generator().manual_seed(seed)
    parts = 3 if gold else 2
    rows = parts * num_pairs
    roles = [Role.CHOSEN, Role.REJECTED, Role.DEMO][:parts]
    return Batch(
        logprobs=leaf(logprob_like(rows, width, gen) * 3),
        mask=ragged_mask(rows, width, gen),
        ref_logprobs=logprob_like(rows, width, gen) * 3,
        prev_logprobs=logprob_like(rows, width, gen) * 3,
        roles=torch.cat([torch.full((num_pairs,), int(r)) for r in roles]),
        pair_ids=torch.arange(num_pairs).repeat(parts),
        trace=torch.arange(num_pairs).repeat(parts) % 3 != 0,
    )


def hybrid_batch(seed: int = 0, width: int = 9) -> Batch:
    """HPT rows: 3 RL groups of 4 SAMPLE rows, then 2 DEMO (SFT) rows in their own groups."""
    batch = rl_batch(num_groups=3, group_size=4, width=width, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    demo = rl_batch(num_groups=2, group_size=1, width=width, seed=seed + 7)
    cat = torch.cat
    return Batch(
        logprobs=leaf(cat([batch.logprobs.detach(), demo.logprobs.detach()])),
        mask=cat([batch.mask, demo.mask]),
        old_logprobs=cat([batch.old_logprobs, demo.old_logprobs]),
        entropy=leaf(cat([batch.entropy.detach(), demo.entropy.detach()])),
        rewards=cat([batch.rewards, torch.zeros(2, dtype=DTYPE)]),
        group_ids=cat([batch.group_ids, torch.tensor([10, 11])]),
        roles=cat([torch.full((12,), int(Role.SAMPLE)), torch.full((2,), int(Role.DEMO))]),
        ref_logprobs=logprob_like(14, width, gen),
    )


def luffy_batch(seed: int = 0, width: int = 9) -> Batch:
    """Groups of 3 on-policy SAMPLE rows + 1 off-policy DEMO row each."""
    batch = rl_batch(num_groups=4, group_size=4, width=width, seed=seed)
    roles = torch.full((16,), int(Role.SAMPLE))
    roles[3::4] = int(Role.DEMO)
    return batch.replace(roles=roles)


def grads(batch: Batch, loss: Tensor) -> tuple[Tensor, Tensor | None]:
    """d loss / d (logprobs, entropy), leaving the leaves' .grad untouched."""
    inputs = [batch.logprobs] + ([batch.entropy] if batch.entropy is not None else [])
    out = torch.autograd.grad(loss, inputs, allow_unused=True)
    g_entropy = out[1] if len(out) > 1 else None
    if g_entropy is None and batch.entropy is not None:
        g_entropy = torch.zeros_like(batch.entropy)
    return out[0], g_entropy


def split_gradient(estimator, batch: Batch, parts: int) -> Tensor:
    """d loss / d logprobs of ``batch`` prepared once and run as ``parts`` micro-batches."""
    prepared = estimator.prepare(batch)
    total = torch.zeros_like(batch.logprobs)
    for micro in prepared.split(parts):
        total += torch.autograd.grad(estimator(micro).loss, batch.logprobs)[0]
    return total


def rel_error(a: Tensor, b: Tensor) -> float:
    scale = b.abs().max().clamp(min=1e-300)
    return float((a - b).abs().max() / scale)


def gspo_batch(seed: int = 0, width: int = 9) -> Batch:
    """rl_batch whose old log-probs give each row a chosen sequence log-ratio log s_i spread
    over ±1e-3 (GSPO's ε is 3e-4/4e-4): some rows clip low, some high, some pass."""
    batch = rl_batch(seed=seed, width=width)
    gen = torch.Generator().manual_seed(seed + 100)
    m, lp = batch.mask, batch.logprobs.detach()
    noise = 0.3 * torch.randn(lp.shape, generator=gen, dtype=DTYPE)
    centred = (noise - (noise * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True)) * m
    target = torch.linspace(-1e-3, 1e-3, batch.num_rows, dtype=DTYPE)
    target = target[torch.randperm(batch.num_rows, generator=gen)].unsqueeze(-1)
    return batch.replace(old_logprobs=lp - centred - target)


def mismatch_batch(seed: int = 0, width: int = 9, spread: float = 0.6) -> Batch:
    """rl_batch plus engine log-probs: most rows far from π_old (ratios beyond [1/2, 2]), a few
    rows nearly equal (sequence masks keep them); the last row of each group is a DEMO row,
    which no rollout correction may touch."""
    batch = rl_batch(seed=seed, width=width)
    gen = torch.Generator().manual_seed(seed + 200)
    scale = torch.full((batch.num_rows, 1), spread, dtype=DTYPE)
    scale[::3] = 0.01
    noise = scale * torch.randn(batch.logprobs.shape, generator=gen, dtype=DTYPE)
    roles = torch.full((batch.num_rows,), int(Role.SAMPLE))
    roles[3::4] = int(Role.DEMO)
    return batch.replace(behaviour_logprobs=batch.old_logprobs + noise, roles=roles)
