"""token_logprobs with ``first_scored_position``: skipping the LM head on prompt columns changes
nothing that a completion mask reads, neither the values nor the parameter gradients; and the
hand-written backward of the log-prob/entropy kernel equals autograd through the plain formulas."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from alignlib.testing import build_tiny_model, build_tokenizer
from alignlib.trainer.logprobs import LogprobEntropy, first_masked_position, token_logprobs

WIDTH = 13
LENGTHS = [13, 10, 7]  # right-padded rows, as collate builds them
COMPLETION_STARTS = [6, 4, 5]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    # init_std 0.5: peaky next-token distributions, so entropies differ clearly per position.
    return build_tiny_model(build_tokenizer(), dtype=torch.float64, init_std=0.5)


def inputs(model: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded input ids, attention mask and completion mask (1 from each row's start)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (len(LENGTHS), WIDTH), generator=gen)
    attention = torch.zeros_like(ids)
    mask = torch.zeros(len(LENGTHS), WIDTH, dtype=torch.float64)
    for r, (length, start) in enumerate(zip(LENGTHS, COMPLETION_STARTS, strict=True)):
        attention[r, :length] = 1
        mask[r, start:length] = 1
    return ids, attention, mask


def run(model: nn.Module, first: int, **kwargs) -> tuple[Tensor, Tensor]:
    ids, attention, _ = inputs(model)
    logprobs, entropy = token_logprobs(
        model, ids, attention, with_entropy=True, first_scored_position=first, **kwargs
    )
    assert entropy is not None
    return logprobs, entropy


def test_first_masked_position() -> None:
    assert first_masked_position(torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1]])) == 2
    assert first_masked_position(torch.tensor([[0, 0, 0, 1], [0, 1, 1, 0]])) == 1
    assert first_masked_position(torch.ones(2, 3)) == 0
    # Nothing selected: score everything, as without skipping (the loss keeps its graph).
    assert first_masked_position(torch.zeros(2, 3)) == 0
    _, _, mask = inputs(build_tiny_model(build_tokenizer()))
    assert first_masked_position(mask) == min(COMPLETION_STARTS)


@pytest.mark.parametrize("first", [2, 4, 5, 9, WIDTH - 1])
@pytest.mark.parametrize("chunk_size", [3, 256])
def test_skipped_head_matches_full_computation(
    model: nn.Module, first: int, chunk_size: int
) -> None:
    with torch.no_grad():
        full_lp, full_ent = run(model, 0, chunk_size=chunk_size, temperature=0.7)
        lp, ent = run(model, first, chunk_size=chunk_size, temperature=0.7)
    assert lp.shape == ent.shape == (len(LENGTHS), WIDTH)
    assert lp.dtype == ent.dtype == torch.float64
    assert (lp[:, first:] - full_lp[:, first:]).abs().max() < 1e-12
    assert (ent[:, first:] - full_ent[:, first:]).abs().max() < 1e-12
    assert torch.all(lp[:, :first] == 0) and torch.all(ent[:, :first] == 0)
    assert torch.all(full_lp[:, 1:first] != 0)  # the skipped columns did hold values


@pytest.mark.parametrize("first", [0, 1])
def test_zero_or_one_computes_every_position(model: nn.Module, first: int) -> None:
    with torch.no_grad():
        ids, attention, _ = inputs(model)
        default = token_logprobs(model, ids, attention, with_entropy=True)
        explicit = run(model, first)
    assert torch.equal(default[0], explicit[0]) and torch.equal(default[1], explicit[1])
    assert torch.all(explicit[0][:, 0] == 0) and torch.all(explicit[0][:, 1:] != 0)


@pytest.mark.parametrize("first", [WIDTH, WIDTH + 7])
def test_start_beyond_the_sequence_scores_nothing(model: nn.Module, first: int) -> None:
    with torch.no_grad():
        lp, ent = run(model, first)
    assert lp.shape == ent.shape == (len(LENGTHS), WIDTH)
    assert torch.all(lp == 0) and torch.all(ent == 0)


def test_negative_start_is_rejected(model: nn.Module) -> None:
    with pytest.raises(ValueError, match="first_scored_position"):
        run(model, -1)


def parameter_grads(model: nn.Module, first: int, field: str) -> dict[str, Tensor]:
    _, _, mask = inputs(model)
    model.zero_grad(set_to_none=True)
    logprobs, entropy = run(model, first, chunk_size=4)
    values = logprobs if field == "logprobs" else entropy
    (mask * values).sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("field", ["logprobs", "entropy"])
def test_gradients_are_unchanged_when_the_mask_is_zero_before_start(
    model: nn.Module, field: str
) -> None:
    _, _, mask = inputs(model)
    first = first_masked_position(mask)
    assert first > 1 and torch.all(mask[:, :first] == 0)
    full = parameter_grads(model, 0, field)
    skipped = parameter_grads(model, first, field)
    model.zero_grad(set_to_none=True)
    assert full.keys() == skipped.keys() and "lm_head.weight" in full
    for name, grad in full.items():
        assert grad.abs().max() > 0, name
        assert (skipped[name] - grad).abs().max() < 1e-10, name


def plain_logprob_entropy(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    logsumexp = torch.logsumexp(logits, dim=-1)
    probs = torch.softmax(logits, dim=-1)
    chosen = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logsumexp
    return chosen, logsumexp - (probs * logits).sum(-1)


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])  # flat, peaky, nearly one-hot
@pytest.mark.parametrize("weights", ["both", "logprob_only", "entropy_only"])
def test_kernel_values_and_gradients_equal_autograd(scale: float, weights: str) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 5, 41, generator=gen, dtype=torch.float64) * scale).requires_grad_()
    targets = torch.randint(0, 41, (3, 5), generator=gen)
    g_chosen = torch.randn(3, 5, generator=gen, dtype=torch.float64) * (weights != "entropy_only")
    g_entropy = torch.randn(3, 5, generator=gen, dtype=torch.float64) * (weights != "logprob_only")
    got = LogprobEntropy.apply(logits, targets)
    want = plain_logprob_entropy(logits, targets)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    grad_got = torch.autograd.grad(got, logits, (g_chosen, g_entropy))[0]
    grad_want = torch.autograd.grad(want, logits, (g_chosen, g_entropy))[0]
    torch.testing.assert_close(grad_got, grad_want, atol=1e-12, rtol=0)
    assert grad_want.abs().max() > 1e-3, "a gradient that is all zero would prove nothing"


def test_kernel_passes_gradcheck() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (2, 3), generator=gen)
    assert torch.autograd.gradcheck(lambda z: LogprobEntropy.apply(z, targets), (logits,))
