"""On-policy distillation (``opd``): the return-to-go estimator is unbiased for the exact
reverse-KL gradient (every sequence of a small tabular policy enumerated, float64), and the loss
and gradient equal TRL 1.16's ``IWOPDTrainer._compute_iw_opd_loss`` from the same logits."""

from __future__ import annotations

import itertools
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from batches import rel_error

from alignlib import algorithms
from alignlib.estimator import Batch, TeacherLogRatio

VOCAB, LENGTH = 3, 3


def prefixes() -> dict[tuple[int, ...], int]:
    """Row index of every prefix of length < LENGTH in the tabular policy's logit table."""
    every = [p for n in range(LENGTH) for p in itertools.product(range(VOCAB), repeat=n)]
    return {p: i for i, p in enumerate(every)}


def sequence_logprobs(table: torch.Tensor, sequence: tuple[int, ...]) -> torch.Tensor:
    """[LENGTH] log π(y_t | y_<t) of a tabular autoregressive policy."""
    index = prefixes()
    rows = [index[sequence[:t]] for t in range(LENGTH)]
    return table.log_softmax(-1)[rows, list(sequence)]


def expected_gradient(theta: torch.Tensor, teacher: torch.Tensor, **params) -> torch.Tensor:
    """E_{y ~ π}[∇ loss(y)] of the opd preset, every sequence weighted by its probability."""
    estimator = algorithms.get("opd", **params)
    total = torch.zeros_like(theta)
    for sequence in itertools.product(range(VOCAB), repeat=LENGTH):
        logprobs = sequence_logprobs(theta, sequence).unsqueeze(0)
        batch = Batch(
            logprobs=logprobs,
            mask=torch.ones_like(logprobs),
            old_logprobs=logprobs.detach(),
            ref_logprobs=sequence_logprobs(teacher, sequence).unsqueeze(0),
        )
        # token-mean over one row of LENGTH tokens: × LENGTH gives the row's sum
        grad = torch.autograd.grad(estimator(batch).loss * LENGTH, theta)[0]
        total = total + logprobs.detach().sum().exp() * grad
    return total


def exact_reverse_kl_gradient(theta: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """∇_θ KL(π_θ ‖ π_T) over whole sequences, by enumeration."""
    kl = torch.zeros((), dtype=theta.dtype)
    for sequence in itertools.product(range(VOCAB), repeat=LENGTH):
        log_p = sequence_logprobs(theta, sequence).sum()
        kl = kl + log_p.exp() * (log_p - sequence_logprobs(teacher, sequence).sum())
    return torch.autograd.grad(kl, theta)[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_return_to_go_is_unbiased_for_the_reverse_kl_gradient(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    shape = (len(prefixes()), VOCAB)
    theta = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_(True)
    teacher = 2 * torch.randn(shape, generator=gen, dtype=torch.float64)
    exact = exact_reverse_kl_gradient(theta, teacher)
    assert rel_error(expected_gradient(theta, teacher, return_to_go=True), exact) < 1e-12
    # the per-token (discount 0) form drops the later tokens' terms: biased, measurably so
    assert rel_error(expected_gradient(theta, teacher), exact) > 1e-2


# ------------------------------------------------------------------------------ TRL parity
trl = pytest.importorskip("trl")


def trl_iw_opd_loss(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    teacher: torch.Tensor,
    rollout: torch.Tensor | None,
    gamma: float,
) -> torch.Tensor:
    from trl.experimental.iw_opd.iw_opd_trainer import IWOPDTrainer

    stub = SimpleNamespace(
        temperature=1.0,
        iw_opd_gamma=gamma,
        iw_opd_epsilon=1e-8,
        model=SimpleNamespace(training=True),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    labels = torch.where(mask > 0, tokens, torch.full_like(tokens, -100))
    return IWOPDTrainer._compute_iw_opd_loss(stub, logits, tokens, labels, teacher, rollout)


@pytest.mark.skipif(trl.__version__ != "1.16.0", reason="the harness targets trl 1.16.0")
@pytest.mark.parametrize(("gamma", "with_rollout"), [(0.0, False), (0.5, False), (0.5, True)])
def test_loss_and_gradient_equal_trl_iw_opd(gamma: float, with_rollout: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    rows, width, vocab = 4, 9, 11
    logits = torch.randn(rows, width, vocab, generator=gen, dtype=torch.float64)
    logits.requires_grad_(True)
    tokens = torch.randint(0, vocab, (rows, width), generator=gen)
    mask = torch.ones(rows, width, dtype=torch.float64)
    mask[0, :3] = 0  # prompt-like leading positions
    mask[2, 6:] = 0  # padding
    teacher = -torch.rand(rows, width, generator=gen, dtype=torch.float64) * 4
    logprobs = logits.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    rollout = logprobs.detach() + 0.3 * torch.randn(rows, width, generator=gen, dtype=torch.float64)
    batch = Batch(
        logprobs=logprobs,
        mask=mask,
        old_logprobs=rollout if with_rollout else logprobs.detach(),
        ref_logprobs=teacher,
    )
    ours = algorithms.get("opd", iw_gamma=gamma)(batch).loss
    theirs = trl_iw_opd_loss(
        logits, tokens, mask, teacher, rollout if with_rollout else None, gamma
    )
    assert abs(float(ours) - float(theirs)) < 1e-12
    got = torch.autograd.grad(ours, logits)[0]
    want = torch.autograd.grad(theirs, logits)[0]
    assert rel_error(got, want) < 1e-12


def test_reverse_kl_metric_is_the_per_token_mean_whatever_the_micro_batching() -> None:
    gen = torch.Generator().manual_seed(3)
    logprobs = -torch.rand(6, 8, generator=gen, dtype=torch.float64)
    teacher = -torch.rand(6, 8, generator=gen, dtype=torch.float64)
    mask = (torch.rand(6, 8, generator=gen) > 0.3).to(torch.float64)
    batch = Batch(logprobs=logprobs, mask=mask, old_logprobs=logprobs, ref_logprobs=teacher)
    estimator = algorithms.get("opd")
    want = float(((logprobs - teacher) * mask).sum() / mask.sum())
    whole = estimator(batch).metrics["opd/reverse_kl"]
    parts = sum(
        float(estimator(p).metrics["opd/reverse_kl"]) for p in estimator.prepare(batch).split(3)
    )
    assert abs(float(whole) - want) < 1e-12 and abs(parts - want) < 1e-12


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(ValueError, match="iw_gamma"):
        TeacherLogRatio(iw_gamma=-0.1)
