"""The optimal token baseline's defining properties, beyond the loop-by-loop closed form in
test_gradient_identity.py (closed_forms_reinforce.py): with equal energy per token and equal
lengths it is the group mean (Dr. GRPO's Â); the lone longest row keeps its tail's return;
rows are aligned by their trained tokens; a group of equal rewards carries nothing but that
tail. The old pass's log Σπ_old²: test_online_correction.py; that it learns: test_online.py."""

from __future__ import annotations

import math

import torch
from batches import rl_batch
from closed_forms_reinforce import energy_batch

from alignlib.estimator import OptimalTokenBaseline
from alignlib.estimator.units import TokenLikelihood

HALF = math.log(0.5)


def advantages(batch, zero_tail: bool = True) -> torch.Tensor:
    rows = torch.ones(batch.num_rows, dtype=torch.bool)
    return OptimalTokenBaseline(zero_tail=zero_tail).compute(batch, rows, TokenLikelihood()).values


def flat_batch(lengths: list[int]):
    """Rows of the given completion lengths, π_old = 1/2 and Σπ² = 1/2 on every token: each
    token's energy 1 − 2·½ + ½ = ½."""
    b = rl_batch(num_groups=len(lengths) // 4, group_size=4, width=10)
    mask = torch.zeros_like(b.mask)
    for i, n in enumerate(lengths):
        mask[i, 2 : 2 + n] = 1
    half = torch.full_like(mask, HALF)
    return b.replace(mask=mask, old_logprobs=half, old_log_sum_sq_probs=half)


def test_equal_energy_and_lengths_give_the_group_mean() -> None:
    b = flat_batch([5] * 4 + [3] * 4)
    mean = torch.stack([b.rewards[:4].mean()] * 4 + [b.rewards[4:].mean()] * 4)
    want = (b.rewards - mean).unsqueeze(-1) * b.mask
    torch.testing.assert_close(advantages(b), want, atol=1e-6, rtol=0)


def test_the_lone_longest_row_keeps_its_tails_return() -> None:
    b = flat_batch([6, 3, 2, 3] + [4] * 4)
    tail = b.mask[0].nonzero().flatten()[3:]  # past the second-longest row's 3 tokens
    assert torch.equal(advantages(b)[0, tail], b.rewards[0].expand(3))
    # without zero_tail the baseline there is its own return: Â ≈ 0 (up to ε)
    assert float(advantages(b, zero_tail=False)[0, tail].abs().max()) < 1e-6


def test_rows_are_aligned_by_their_trained_tokens() -> None:
    """An environment's tokens (mask 0 inside the completion) shift positions, not indices."""
    b = energy_batch()
    gap = b.mask.clone()
    shifted = b.old_logprobs.clone(), b.old_log_sum_sq_probs.clone()
    row = int(b.mask.sum(-1).argmin())  # a short row: room for a gap of two
    n = int(b.mask[row].sum())
    gap[row] = 0
    gap[row, 2:3] = 1
    gap[row, 5 : 5 + n - 1] = 1
    for tensor, source in zip(shifted, (b.old_logprobs, b.old_log_sum_sq_probs), strict=True):
        tensor[row] = 0
        tensor[row, gap[row] > 0] = source[row, b.mask[row] > 0]
    moved = b.replace(mask=gap, old_logprobs=shifted[0], old_log_sum_sq_probs=shifted[1])
    before, after = advantages(b), advantages(moved)
    torch.testing.assert_close(after[gap > 0], before[b.mask > 0], atol=1e-12, rtol=0)


def test_a_group_of_equal_rewards_carries_only_the_lone_tail() -> None:
    """Equal rewards: Â ≈ 0, except (verl's zero tail) the tail of a lone longest row, whose
    baseline is 0 there."""
    b = energy_batch()  # rl_batch: group 0's rewards are all 1
    assert float(advantages(b, zero_tail=False)[:4].abs().max()) < 1e-6
    lengths = b.mask[:4].sum(-1)
    top, second = lengths.sort().values[-1], lengths.sort().values[-2]
    assert top > second  # this batch has a lone longest row in group 0
    kept = advantages(b)[:4].abs() > 1e-6
    assert int(kept.sum()) == int(top - second)
    assert float(advantages(b)[4:].abs().max()) > 0.1
