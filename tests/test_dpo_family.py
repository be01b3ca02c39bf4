"""Properties of the DPO-family losses that hold by their papers' arguments (the closed forms
themselves are in test_gradient_identity.py, TRL parity in test_trl_parity.py)."""

from __future__ import annotations

import math

import pytest
import torch
from batches import pair_batch, rel_error

from alignlib import algorithms
from alignlib.estimator import Batch, Role
from alignlib.estimator.registry import ParameterError


def swapped(batch: Batch) -> Batch:
    """The same pairs with every label flipped (chosen ↔ rejected)."""
    roles = torch.where(batch.roles == int(Role.CHOSEN), int(Role.REJECTED), int(Role.CHOSEN)).to(
        batch.roles.dtype
    )
    return batch.replace(roles=roles)


def loss_and_grad(name: str, batch: Batch, **params) -> tuple[float, torch.Tensor]:
    loss = algorithms.get(name, **params)(batch).loss
    return float(loss), torch.autograd.grad(loss, batch.logprobs)[0]


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_robust_dpo_is_unbiased_under_flipped_labels(eps: float) -> None:
    """Chowdhury et al. (2024), Lemma 3.1: if each label is flipped with probability ε, the
    expected robust loss (and its gradient) is the clean DPO loss."""
    batch = pair_batch(seed=3)
    clean = loss_and_grad("dpo", batch, beta=0.2)
    kept = loss_and_grad("robust", batch, beta=0.2, label_smoothing=eps)
    flipped = loss_and_grad("robust", swapped(batch), beta=0.2, label_smoothing=eps)
    expected_loss = (1 - eps) * kept[0] + eps * flipped[0]
    expected_grad = (1 - eps) * kept[1] + eps * flipped[1]
    assert abs(expected_loss - clean[0]) < 1e-12
    assert rel_error(expected_grad, clean[1]) < 1e-12
    assert rel_error(kept[1], clean[1]) > 1e-3  # on its own it is not DPO


def test_exo_pushes_each_pair_to_its_target_margin_not_beyond() -> None:
    """EXO's minimum is the data's preference: the gradient vanishes at βΔ = log((1 − ε)/ε)
    and points back from both sides, unlike DPO's, which always pushes Δ up."""
    batch = pair_batch(num_pairs=1, seed=1)
    beta, eps = 0.5, 0.1
    target = math.log((1 - eps) / eps) / beta
    chosen = batch.roles == int(Role.CHOSEN)
    first = batch.mask[chosen][0].nonzero()[0, 0]
    u = ((batch.logprobs - batch.ref_logprobs) * batch.mask).sum(-1).detach()
    for offset, sign in [(0.0, 0), (0.5, 1), (-0.5, -1)]:
        shift = torch.zeros_like(batch.logprobs)
        shift[chosen.nonzero()[0, 0], first] = target + offset - (u[chosen] - u[~chosen]).item()
        moved = batch.replace(logprobs=(batch.logprobs.detach() + shift).requires_grad_(True))
        _, grad = loss_and_grad("exo_pair", moved, beta=beta, label_smoothing=eps)
        slope = float(grad[chosen].sum())  # d loss / d l(y_w)
        if sign == 0:
            assert abs(slope) < 1e-12
        else:
            assert slope * sign > 0  # above the target the loss rises with Δ, below it falls
    _, dpo_grad = loss_and_grad("dpo", moved, beta=beta)
    assert float(dpo_grad[chosen].sum()) < 0


def test_alpha_divergence_spans_reverse_and_forward_kl() -> None:
    """f-DPO's α-divergence tends to the reverse KL (α → 0) and is the forward KL at α = 1."""
    batch = pair_batch(seed=2)
    reverse = loss_and_grad("dpo", batch, beta=0.1)
    near_zero = loss_and_grad("dpo", batch, beta=0.1, divergence="alpha", divergence_alpha=1e-7)
    assert rel_error(near_zero[1], reverse[1]) < 1e-5
    forward = loss_and_grad("dpo", batch, beta=0.1, divergence="forward_kl")
    near_one = loss_and_grad("dpo", batch, beta=0.1, divergence="alpha", divergence_alpha=1 - 1e-9)
    assert rel_error(near_one[1], forward[1]) < 1e-6
    assert rel_error(forward[1], reverse[1]) > 1e-2


@pytest.mark.parametrize(
    ("name", "params", "named"),
    [
        ("robust", {"label_smoothing": 0.5}, "label_smoothing"),
        ("exo_pair", {"label_smoothing": 0.0}, "label_smoothing"),
        ("dpo", {"label_smoothing": -0.1}, "label_smoothing"),
        ("dpo", {"divergence": "kl"}, "divergence"),
        ("dpo", {"divergence": "alpha", "divergence_alpha": 1.5}, "divergence_alpha"),
        ("discopop", {"tau": 0.0}, "tau"),
        ("apo_down", {"beta": 0.0}, "beta"),
    ],
)
def test_bad_parameters_are_named(name: str, params: dict, named: str) -> None:
    with pytest.raises((ParameterError, ValueError)) as caught:
        algorithms.get(name, **params)
    message = str(caught.value)
    assert named in message and "\n" not in message


def test_dpop_is_dpo_until_the_chosen_response_sinks_below_the_reference() -> None:
    """Pal et al. (2024): with every chosen response at least as likely as under π_ref the
    penalty is 0 and DPOP is DPO; below it, the chosen response's likelihood is pushed up
    (1 + λ) times as hard as the rejected one's is pushed down (DPO: equally), and the larger
    loss changes the pair's weight."""
    batch = pair_batch(num_pairs=4, seed=5)
    chosen = batch.roles == int(Role.CHOSEN)
    u = ((batch.logprobs - batch.ref_logprobs) * batch.mask).sum(-1).detach()
    for direction in (1.0, -1.0):  # every chosen response above, then below π_ref
        lift = torch.zeros_like(batch.logprobs)
        for row in chosen.nonzero().flatten().tolist():
            first = batch.mask[row].nonzero()[0, 0]
            lift[row, first] = direction * (abs(float(u[row])) + 1.0) - float(u[row])
        moved = batch.replace(logprobs=(batch.logprobs.detach() + lift).requires_grad_(True))
        loss, grad = loss_and_grad("dpop", moved, beta=0.2, lam=5.0)
        dpo_loss, dpo_grad = loss_and_grad("dpo", moved, beta=0.2)
        if direction > 0:
            assert abs(loss - dpo_loss) < 1e-12 and rel_error(grad, dpo_grad) < 1e-12
        else:
            per_row = (grad * moved.mask).sum(-1) / moved.mask.sum(-1)  # d loss / d l(y) per row
            dpo_row = (dpo_grad * moved.mask).sum(-1) / moved.mask.sum(-1)
            assert bool((per_row[chosen] < 0).all())  # it raises the chosen likelihood
            ratio = per_row[chosen] / -per_row[~chosen]
            torch.testing.assert_close(ratio, torch.full_like(ratio, 6.0), rtol=1e-12, atol=0)
            assert loss > dpo_loss and rel_error(per_row[~chosen], dpo_row[~chosen]) > 1e-3


def test_rdpo_is_dpo_against_a_reference_charging_alpha_per_token() -> None:
    """Park et al. (2024): R-DPO's margin is DPO's for the policy whose objective charges α per
    token, i.e. DPO against π_ref·exp(−α|y|/β): the same loss and gradient, and not DPO's."""
    batch = pair_batch(seed=6)
    beta, alpha = 0.2, 0.3
    charged = batch.replace(ref_logprobs=batch.ref_logprobs - alpha / beta * batch.mask)
    loss, grad = loss_and_grad("rdpo", batch, beta=beta, alpha=alpha)
    shifted_loss, shifted_grad = loss_and_grad("dpo", charged, beta=beta)
    assert abs(loss - shifted_loss) < 1e-12 and rel_error(grad, shifted_grad) < 1e-12
    plain = loss_and_grad("dpo", batch, beta=beta)
    assert rel_error(plain[1], grad) > 1e-3  # the lengths differ, so the term matters
