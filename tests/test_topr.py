"""TOPR's defining properties, beyond the closed form in test_gradient_identity.py: on-policy it
is REINFORCE with the baseline c; positive rows ignore the ratio; a negative row's gradient
fades with its sequence ratio; the baseline decides which rows are negative."""

from __future__ import annotations

import pytest
import torch
from batches import leaf, rl_batch
from closed_forms_reinforce import signed_batch

from alignlib import algorithms
from alignlib.estimator import Batch, RegistryError
from alignlib.estimator.registry import ParameterError


def grad(batch: Batch, **params: object) -> torch.Tensor:
    out = algorithms.get("topr", **params)(batch)
    return torch.autograd.grad(out.loss, batch.logprobs)[0]


def fresh(batch: Batch, **changes: object) -> Batch:
    return batch.replace(logprobs=leaf(batch.logprobs.detach()), **changes)


def test_on_policy_it_is_reinforce_with_the_baseline() -> None:
    b = signed_batch()
    b = fresh(b, old_logprobs=b.logprobs.detach().clone())
    adv = (b.rewards - 0.3).unsqueeze(-1)
    want = -adv * b.mask / b.num_rows  # d/dℓ of mean_i −Â_i Σ_t ℓ_t
    assert torch.allclose(grad(b, baseline=0.3), want, atol=1e-12)


def test_positive_rows_ignore_the_ratio_and_negative_rows_taper() -> None:
    b = signed_batch()
    positive = b.rewards > 0
    near = grad(fresh(b, old_logprobs=b.logprobs.detach().clone()))
    shifted = fresh(b, old_logprobs=b.logprobs.detach() + 0.7)  # π/π_old = e^(−0.7·|y|) < 1
    far = grad(shifted)
    assert torch.equal(far[positive], near[positive])
    ratio = torch.exp(-0.7 * b.mask.sum(-1))[~positive].unsqueeze(-1)
    assert torch.allclose(far[~positive], near[~positive] * ratio, atol=1e-15)
    assert bool((far[~positive].abs().sum(-1) < near[~positive].abs().sum(-1)).all())


def test_a_negative_row_likelier_than_under_pi_old_keeps_weight_one() -> None:
    """clip(π/μ, 0, 1): the truncation caps the weight at 1, it never amplifies."""
    b = signed_batch()
    above = fresh(b, old_logprobs=b.logprobs.detach() - 0.7)
    on_policy = fresh(b, old_logprobs=b.logprobs.detach().clone())
    assert torch.allclose(grad(above), grad(on_policy), atol=1e-15)


def test_the_random_batches_reach_both_branches() -> None:
    """The closed-form identity is only meaningful if negative rows occur with sequence
    ratios on both sides of 1."""
    for seed in range(3):
        b = signed_batch(seed)
        log_ratio = ((b.logprobs.detach() - b.old_logprobs) * b.mask).sum(-1)[b.rewards < 0]
        assert bool((log_ratio < 0).any()) and bool((log_ratio > 0).any())


def test_the_baseline_decides_which_rows_are_negative() -> None:
    """Rewards 0/1 with c = 0: no row is negative, so a far π_old changes nothing (SFT on the
    right answers); with c = 0.5 the wrong ones are negative and tapered."""
    b = rl_batch(spread=0.5)
    far = b.logprobs.detach() + 0.7
    assert torch.equal(grad(fresh(b, old_logprobs=far)), grad(fresh(b)))
    assert not torch.allclose(
        grad(fresh(b, old_logprobs=far), baseline=0.5), grad(fresh(b), baseline=0.5)
    )


def test_bad_options_fail_in_one_line() -> None:
    with pytest.raises(ParameterError, match=r"level.*sequence.*token"):
        algorithms.get("topr", level="row")
    with pytest.raises(ParameterError, match="negative_weight"):
        algorithms.get("topr", negative_weight=-1.0)
    with pytest.raises(RegistryError, match="advantage"):
        algorithms.get("topr", advantage="grpoo")
