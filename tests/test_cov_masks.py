"""Clip-Cov and KL-Cov: the worked example of METHODS.md §3, selection counts, zero gradient on
dropped tokens, seeded reproducibility, uniform draws, and global (micro-batch-free) selection."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from batches import rel_error, rl_batch, split_gradient

from alignlib import algorithms
from alignlib.estimator import (
    Batch,
    ClipCov,
    KLCov,
    OldPolicy,
    PPOClip,
    UnifiedEstimator,
    token_covariance,
)

MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float64)
ADV = torch.tensor([[1.5, 1.5, 1.5, 0], [-0.5, -0.5, -0.5, -0.5]], dtype=torch.float64)
LOGP = torch.tensor([[-0.1, -2.0, -0.05, 0.0], [-3.0, -0.2, -1.0, -0.7]], dtype=torch.float64)


def worked_batch() -> Batch:
    return Batch(
        logprobs=LOGP.clone().requires_grad_(True),
        mask=MASK,
        old_logprobs=LOGP.clone(),
        advantages=ADV,
    )


def estimator_with(mask) -> UnifiedEstimator:
    return UnifiedEstimator(mask=mask, reference=OldPolicy(clamp=None), advantage="given")


def test_worked_example_covariance() -> None:
    cov = token_covariance(LOGP, ADV, MASK)
    expected = torch.tensor(
        [[1.0367, -1.1347, 1.0939, 0.0], [1.7082, -0.6918, -0.0061, -0.2633]], dtype=torch.float64
    )
    assert torch.allclose(cov, expected, atol=1e-4)
    assert abs(float((ADV * MASK).sum() / MASK.sum()) - 0.357143) < 1e-6
    assert abs(float((LOGP * MASK).sum() / MASK.sum()) + 1.007143) < 1e-6


@pytest.mark.parametrize("ratio", [1e-4, 0.1, 0.28])
def test_worked_example_kl_cov_selects_row1_pos0(ratio: float) -> None:
    prepared = estimator_with(KLCov(ratio=ratio)).prepare(worked_batch())
    selected = prepared.prepared["0.mask0.selected"]
    assert selected.nonzero().tolist() == [[1, 0]]


def test_worked_example_clip_cov_candidates() -> None:
    seen = set()
    for seed in range(40):
        mask = ClipCov(ratio=2e-4, seed=seed)
        dropped = estimator_with(mask).prepare(worked_batch()).prepared["0.mask0.drop"]
        assert int(dropped.sum()) == 1  # k = max(⌊2e-4·7⌋, 1) = 1
        seen |= {tuple(i) for i in dropped.nonzero().tolist()}
    assert seen == {(0, 0), (0, 2), (1, 0)}


def test_dropped_tokens_get_exactly_zero_gradient() -> None:
    batch = rl_batch(num_groups=8, group_size=4, width=16)
    estimator = algorithms.get("clip_cov", ratio=0.05, cov_low=-100.0, cov_high=100.0)
    prepared = estimator.prepare(batch)
    dropped = prepared.prepared["0.mask0.drop"]
    grad = torch.autograd.grad(estimator(prepared).loss, batch.logprobs)[0]
    assert int(dropped.sum()) > 1
    assert bool((grad[dropped] == 0).all())
    live = (batch.mask > 0) & ~dropped
    assert float((grad[live] != 0).to(torch.float64).mean()) > 0.5


@pytest.mark.parametrize("ratio", [2e-4, 0.01, 0.05, 0.2, 0.9])
def test_clip_cov_count_is_min_of_k_and_candidates(ratio: float) -> None:
    batch = rl_batch(num_groups=8, group_size=4, width=16)
    mask = ClipCov(ratio=ratio, cov_low=0.05, cov_high=2.0)
    prepared = estimator_with_grpo(mask).prepare(batch)
    dropped = prepared.prepared["0.mask0.drop"]
    # Candidates recomputed independently of ClipCov.draw.
    adv = prepared.prepared["0.adv"].unsqueeze(-1).expand_as(batch.mask)
    valid = batch.mask > 0
    lp = batch.logprobs.detach()
    cov = (lp - lp[valid].mean()) * (adv - adv[valid].mean())
    ratio_t = torch.exp(lp - batch.old_logprobs)
    clipped = -adv * ratio_t.clamp(0.0, 2.0) > -adv * ratio_t
    candidates = valid & (cov > 0.05) & (cov < 2.0) & ~clipped
    k = max(math.floor(ratio * int(valid.sum())), 1)
    assert int(dropped.sum()) == min(k, int(candidates.sum()))
    assert bool((dropped <= candidates).all())


def estimator_with_grpo(mask) -> UnifiedEstimator:
    return UnifiedEstimator(mask=mask, reference=OldPolicy(clamp=None), advantage="grpo")


@pytest.mark.parametrize("ratio", [1e-4, 0.01, 0.1])
def test_kl_cov_count(ratio: float) -> None:
    batch = rl_batch(num_groups=8, group_size=4, width=16)
    prepared = estimator_with_grpo(KLCov(ratio=ratio)).prepare(batch)
    n = int(batch.mask.sum())
    assert int(prepared.prepared["0.mask0.selected"].sum()) == max(1, math.floor(n * ratio))


def test_kl_cov_ties_go_to_lower_flat_index() -> None:
    # Cov = [[0.125, 0.375], [0.625, 0.375]]: with k = 2 the tie at 0.375 goes to flat index 1.
    batch = Batch(
        logprobs=torch.tensor([[-2.0, -1.0], [-3.0, -1.0]], dtype=torch.float64),
        mask=torch.ones(2, 2),
        old_logprobs=torch.zeros(2, 2, dtype=torch.float64),
        advantages=torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64),
    )
    selected = estimator_with(KLCov(ratio=0.5)).prepare(batch).prepared["0.mask0.selected"]
    assert selected.nonzero().tolist() == [[0, 1], [1, 0]]


def test_kl_cov_is_plain_policy_gradient_on_policy() -> None:
    batch = rl_batch()
    batch = batch.replace(old_logprobs=batch.logprobs.detach().clone())
    plain = UnifiedEstimator(reference=OldPolicy(clamp=None), advantage="grpo")
    g_kl = torch.autograd.grad(algorithms.get("kl_cov")(batch).loss, batch.logprobs)[0]
    g_pg = torch.autograd.grad(plain(batch).loss, batch.logprobs)[0]
    # |ℓ − ℓ_old| has a subgradient of 0 at equality in torch: only the PG term remains.
    assert rel_error(g_kl, g_pg) < 1e-12


def test_clip_cov_without_candidates_is_vanilla_ppo() -> None:
    batch = rl_batch()
    clip = PPOClip(eps_low=0.2, eps_high=0.2, clamp=None)
    cov_mask = ClipCov(ratio=1e-6, cov_low=1e6, cov_high=1e7, clip=clip)
    g_cov = torch.autograd.grad(estimator_with_grpo(cov_mask)(batch).loss, batch.logprobs)[0]
    g_ppo = torch.autograd.grad(estimator_with_grpo(clip)(batch).loss, batch.logprobs)[0]
    assert rel_error(g_cov, g_ppo) < 1e-14


def test_clip_cov_is_seeded_and_advances() -> None:
    batch = rl_batch(num_groups=8, group_size=4, width=16)

    def draws(seed: int) -> list[list[list[int]]]:
        estimator = algorithms.get(
            "clip_cov", ratio=0.02, cov_low=-100.0, cov_high=100.0, seed=seed
        )
        return [
            estimator.prepare(batch).prepared["0.mask0.drop"].nonzero().tolist() for _ in range(3)
        ]

    first = draws(0)
    assert first == draws(0)
    assert first != draws(1)
    assert first[0] != first[1]  # the generator advances between steps


def test_clip_cov_draws_are_uniform() -> None:
    counts: Counter[tuple[int, int]] = Counter()
    trials = 3000
    mask = ClipCov(ratio=2e-4, seed=123)
    estimator = estimator_with(mask)
    for _ in range(trials):
        dropped = estimator.prepare(worked_batch()).prepared["0.mask0.drop"]
        counts[tuple(dropped.nonzero()[0].tolist())] += 1
    assert set(counts) == {(0, 0), (0, 2), (1, 0)}
    expected = trials / 3
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 13.8  # p = 0.001 for 2 degrees of freedom


def test_clip_cov_generator_state_resumes() -> None:
    batch = rl_batch(num_groups=8, group_size=4, width=16)
    estimator = algorithms.get("clip_cov", ratio=0.02, cov_low=-100.0, cov_high=100.0)
    estimator.prepare(batch)
    state = estimator.state_dict()
    expected = estimator.prepare(batch).prepared["0.mask0.drop"]
    resumed = algorithms.get("clip_cov", ratio=0.02, cov_low=-100.0, cov_high=100.0)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.prepare(batch).prepared["0.mask0.drop"], expected)


@pytest.mark.parametrize("name", ["kl_cov", "clip_cov"])
def test_global_selection_ignores_microbatch_size(name: str) -> None:
    batch = rl_batch(num_groups=8, group_size=4, width=16)
    batch = batch.replace(old_logprobs=batch.logprobs.detach() + 0.1)
    overrides = {"ratio": 0.05} if name == "kl_cov" else {"ratio": 0.05, "cov_low": -9.0}
    grads = [split_gradient(algorithms.get(name, **overrides), batch, n) for n in (1, 4, 8)]
    assert rel_error(grads[1], grads[0]) < 1e-12
    assert rel_error(grads[2], grads[0]) < 1e-12


def test_per_microbatch_scope_depends_on_split() -> None:
    """The reference code's behaviour, kept for parity runs: selection changes with the split."""
    batch = rl_batch(num_groups=8, group_size=4, width=16)
    batch = batch.replace(old_logprobs=batch.logprobs.detach() + 0.1)
    estimator = algorithms.get("kl_cov", ratio=0.02, scope="per_microbatch")
    grads = [split_gradient(estimator, batch, n) for n in (1, 8)]
    assert rel_error(grads[1], grads[0]) > 1e-6
