"""OPO, GPG, max@k / PKPO and Pass@k Training beyond their closed forms (in
closed_forms_group_baselines.py, by loops over rows and k-subsets, checked by
test_gradient_identity.py): the properties their papers derive them from.

- max@k (Tang et al.: k = n; PKPO: k < n): the leave-one-out advantage is an unbiased estimate
  of ∇E[max of k rewards], checked exactly by enumerating every n-tuple of a small categorical
  policy (no sampling) against the gradient of E[max of k] from its CDF;
- GPG: α = B/(B − M) makes the token mean over all rows the mean over the rows that carry a
  signal (equal lengths), and its logged ``alpha`` is the rollout batch's, however split;
- Pass@k Training: a reward outside [0, 1] (where its σ is no std) is refused in one line."""

from __future__ import annotations

import itertools

import pytest
import torch
from batches import rel_error, rl_batch
from closed_forms_group_baselines import graded_batch, groups
from torch import Tensor

from alignlib import algorithms
from alignlib.estimator import Batch, MaxAtK, TokenLikelihood

VALUES = torch.tensor([0.0, 0.3, 1.0, 0.6], dtype=torch.float64)
"""The reward of each of the categorical policy's outcomes."""


def best_of(log_pi: Tensor, k: int) -> Tensor:
    """E[max of k samples] of the categorical policy, from its CDF: Σ_v v·(F(v)^k − F(v⁻)^k)."""
    order = torch.argsort(VALUES)
    cdf = torch.cumsum(log_pi.exp()[order], 0)
    below = torch.cat([cdf.new_zeros(1), cdf[:-1]])
    return (VALUES[order] * (cdf**k - below**k)).sum()


def exact_gradients(logits: Tensor, n: int, k: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """(∇E[max of k], ∇E[one sample], E[Σ_i Â_i ∇log π(y_i)] over all n-tuples of outcomes)."""
    log_pi = torch.log_softmax(logits, -1)
    estimated = torch.zeros((), dtype=torch.float64)
    advantage = MaxAtK(k=k, std=False)
    for outcomes in itertools.product(range(len(VALUES)), repeat=n):
        picked = log_pi[list(outcomes)]
        batch = Batch(
            logprobs=picked.detach().unsqueeze(-1),
            mask=torch.ones(n, 1, dtype=torch.float64),
            rewards=VALUES[list(outcomes)],
            group_ids=torch.zeros(n, dtype=torch.long),
        )
        rows = torch.ones(n, dtype=torch.bool)
        adv = advantage.compute(batch, rows, TokenLikelihood()).values
        estimated = estimated + picked.sum().exp().detach() * (adv * picked).sum()
    objectives = (best_of(log_pi, n if k is None else k), best_of(log_pi, 1), estimated)
    grads = [torch.autograd.grad(f, logits, retain_graph=True)[0] for f in objectives]
    return grads[0], grads[1], grads[2]


@pytest.mark.parametrize(("n", "k"), [(2, None), (3, None), (4, None), (4, 2), (5, 3), (5, 4)])
def test_max_at_k_advantage_is_the_unbiased_gradient_of_the_best_of_k(
    n: int, k: int | None
) -> None:
    """Tang et al.'s k = n and PKPO's k < n: exact expectations over every n-tuple."""
    logits = torch.tensor([0.4, -0.3, -1.2, 0.1], dtype=torch.float64, requires_grad=True)
    of_max, of_one, estimated = exact_gradients(logits, n, k)
    assert rel_error(estimated, of_max) < 1e-12
    assert rel_error(of_one, of_max) > 0.1  # a different objective: the test can tell


def equal_lengths(b: Batch) -> Batch:
    mask = torch.zeros_like(b.mask)
    mask[:, 2:7] = 1
    return b.replace(mask=mask)


def test_gpg_alpha_turns_the_token_mean_into_the_mean_over_rows_with_a_signal() -> None:
    """Equal lengths: GPG's gradient over all rows (α = B/(B − M)) equals the plain token-mean
    policy gradient over only the rows of groups whose rewards differ (α = 1 there)."""
    b = equal_lengths(rl_batch(num_groups=5, group_size=4, seed=3))  # group 0: all solved
    rewards = b.rewards.tolist()
    signal = [i for m in groups(b) if len({rewards[j] for j in m}) > 1 for i in m]
    assert 0 < len(signal) < b.num_rows, "the batch needs groups with and without a signal"
    full = torch.autograd.grad(algorithms.get("gpg")(b).loss, b.logprobs)[0]
    kept = b.select(torch.tensor(signal)).replace(logprobs=b.logprobs[signal])
    only = torch.autograd.grad(algorithms.get("gpg", alpha="none")(kept).loss, b.logprobs)[0]
    assert rel_error(full, only) < 1e-12
    plain = torch.autograd.grad(algorithms.get("gpg", alpha="none")(b).loss, b.logprobs)[0]
    assert rel_error(plain, only) > 0.1  # without α the rows with no signal dilute the mean


def alpha_of(b: Batch) -> float:
    rewards = b.rewards.tolist()
    varied = sum(len(m) for m in groups(b) if len({rewards[j] for j in m}) > 1)
    return b.num_rows / varied


def test_gpg_logs_the_rollout_batch_alpha_however_it_is_split() -> None:
    b = graded_batch()
    estimator = algorithms.get("gpg")
    prepared = estimator.prepare(b)
    micro = sum(float(estimator(m).metrics["gpg/alpha"]) for m in prepared.split(4))
    assert micro == pytest.approx(alpha_of(b), rel=1e-12)
    given = b.replace(precomputed=estimator.precompute(b))
    for part in (b.group_ids <= 1, b.group_ids > 1):
        half = estimator.prepare(given.select(part.nonzero().flatten()))
        assert float(estimator(half).metrics["gpg/alpha"]) == pytest.approx(alpha_of(b))
        alone = estimator(estimator.prepare(b.select(part.nonzero().flatten())))
        assert float(alone.metrics["gpg/alpha"]) != pytest.approx(alpha_of(b))


def test_pass_at_k_training_refuses_a_reward_outside_zero_one() -> None:
    b = graded_batch()
    b = b.replace(rewards=b.rewards.clone().index_fill(0, torch.tensor([6]), 1.5))
    with pytest.raises(ValueError, match=r"rewards must lie in \[0, 1\].*row 6 has 1.5.*pkpo"):
        algorithms.get("passk_training", k=3)(b)
