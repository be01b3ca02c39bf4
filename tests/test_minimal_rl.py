"""RAFT++ and Reinforce-Rej beyond the closed forms of test_gradient_identity.py: which rows each
form trains, that the random batches reach every branch the closed forms have (the dual clip,
the group of one row, rejected rows in or out of the denominator), that the two forms are
different methods, and the presets' one-line errors."""

from __future__ import annotations

import pytest
import torch
from batches import rel_error
from closed_forms_minimal_rl import any_dual_clip, graded_batch, mixed_rows, signed_batch

from alignlib import algorithms


def row_grads(name: str, batch, **params) -> torch.Tensor:
    """[R] the gradient's norm on each row's log-probs, KL to π_ref off."""
    loss = algorithms.get(name, kl_coef=0.0, **params)(batch).loss
    return torch.autograd.grad(loss, batch.logprobs)[0].norm(dim=-1)


@pytest.mark.parametrize("form", ["paper", "released"])
@pytest.mark.parametrize("importance_sampling", [True, False])
def test_raft_trains_only_the_positively_rewarded_rows(form: str, importance_sampling: bool):
    b = graded_batch(seed=2)
    grads = row_grads("raft_pp", b, form=form, importance_sampling=importance_sampling)
    positive = b.rewards > 0
    assert bool((grads[~positive] == 0).all())
    assert int((grads[positive] > 0).sum()) >= int(positive.sum()) - 2  # a few clip to 0


def test_raft_forms_differ_in_the_denominator_and_the_weights():
    """Paper: the rejected rows leave the batch, kept rows weigh 1 each, per-sample mean;
    released: max(R, 0) weights and a token mean counting the rejected rows' tokens too."""
    b = graded_batch(seed=0)
    assert {0.5, 1.0} <= set(b.rewards.tolist())  # max(R, 0) is not an indicator here
    paper = algorithms.get("raft_pp", kl_coef=0.0, importance_sampling=False)(b).loss
    released = algorithms.get("raft_pp", kl_coef=0.0, importance_sampling=False, form="released")(
        b
    ).loss
    g_paper = torch.autograd.grad(paper, b.logprobs)[0]
    g_released = torch.autograd.grad(released, b.logprobs)[0]
    assert rel_error(g_paper, g_released) > 0.1


def test_the_paper_form_keeps_the_kl_off_the_rejected_rows():
    b = graded_batch(seed=1)
    grads = row_grads("raft_pp", b)  # KL off: rejected rows have no gradient
    with_kl = algorithms.get("raft_pp", kl_coef=0.5)(b).loss
    kl_grads = torch.autograd.grad(with_kl, b.logprobs)[0].norm(dim=-1)
    rejected = b.rewards <= 0
    assert bool((grads[rejected] == 0).all()) and bool((kl_grads[rejected] == 0).all())
    released = algorithms.get("raft_pp", kl_coef=0.5, form="released")(b).loss
    released_grads = torch.autograd.grad(released, b.logprobs)[0].norm(dim=-1)
    assert bool((released_grads[rejected] > 0).all())  # verl's KL spans every row


def test_reinforce_rej_drops_uniform_prompts_and_the_forms_treat_a_lone_row_differently():
    b = signed_batch(seed=0)
    mixed = torch.tensor(mixed_rows(b))
    lone = 19
    assert not mixed[0:8].any() and bool(mixed[lone])  # all right, all wrong; a group of one
    paper = row_grads("reinforce_rej", b)
    released = row_grads("reinforce_rej", b, form="released")
    assert bool((paper[0:8] == 0).all()) and bool((released[0:8] == 0).all())
    assert paper[lone] == 0 and released[lone] > 0
    negatives = (b.rewards < 0) & mixed
    assert bool((paper[negatives] > 0).any())  # ±1 rewards: the wrong answers are pushed down


def test_the_released_dual_clip_binds_in_the_random_batches():
    """The closed form's dual-clip branch is reached: each seed test_gradient_identity uses has
    a negative row of a mixed group with ρ > 3, and the estimator reports it clipped."""
    assert all(any_dual_clip(signed_batch(seed)) for seed in range(3))
    b = signed_batch(0)
    released = algorithms.get("reinforce_rej", form="released", kl_coef=0.0)
    out = released(b)
    assert float(out.metrics["reinforce_rej/clipfrac_lower"]) > 0


@pytest.mark.parametrize("name", ["raft_pp", "reinforce_rej"])
def test_an_unknown_form_is_one_line(name: str):
    with pytest.raises(ValueError, match=f"{name}: form must be 'paper' or 'released'"):
        algorithms.get(name, form="code")
