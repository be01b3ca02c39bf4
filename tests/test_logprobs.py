"""token_logprobs with ``first_scored_position``: skipping the LM head on prompt columns changes
nothing that a completion mask reads, neither the values nor the parameter gradients; and the
hand-written backward of the log-prob/entropy kernel equals autograd through the plain formulas."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import alignlib.trainer.logprobs as logprobs_module
from alignlib.testing import build_tiny_model, build_tokenizer
from alignlib.trainer.logprobs import (
    LinearLogprobEntropy,
    LogprobEntropy,
    first_masked_position,
    is_plain_linear,
    token_logprobs,
)


@pytest.fixture(autouse=True)
def memory_floor_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests exercise the memory-floor path at tiny sizes, where token_logprobs would
    otherwise pick the chunked path (it is the faster one below FLOOR_FROM_BYTES)."""
    monkeypatch.setattr(logprobs_module, "FLOOR_FROM_BYTES", 0)


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


# --- the linear-head kernel: no logits kept for the backward, gradients as autograd's ---------


def reference(model: nn.Module, temperature: float) -> tuple[Tensor, Tensor]:
    """Plain autograd: full logits, log_softmax, gather; column 0 padded with 0 like the kernel."""
    ids, attention, _ = inputs(model)
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1] / temperature
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    pad = chosen.new_zeros(len(LENGTHS), 1)
    return torch.cat([pad, chosen], 1), torch.cat([pad, entropy], 1)


def loss_grads(model: nn.Module, values: tuple[Tensor, Tensor], field: str) -> dict[str, Tensor]:
    """Gradients of Σ g_y·logp + g_H·H with fixed random upstream grads g (per position)."""
    gen = torch.Generator().manual_seed(3)
    g_y, g_h = (torch.randn(values[0].shape, generator=gen, dtype=torch.float64) for _ in "yh")
    g_y, g_h = g_y * (field != "entropy"), g_h * (field != "logprobs")
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad((g_y * values[0] + g_h * values[1]).sum(), params)
    return dict(
        zip([n for n, p in model.named_parameters() if p.requires_grad], grads, strict=True)
    )


def assert_identity(model: nn.Module, field: str, temperature: float, chunk_size: int) -> None:
    want = reference(model, temperature)
    got = run(model, 0, chunk_size=chunk_size, temperature=temperature)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    grads, expected = loss_grads(model, got, field), loss_grads(model, want, field)
    assert grads.keys() == expected.keys()
    for name, grad in expected.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grads[name], grad, atol=1e-10, rtol=1e-10, msg=name)


@pytest.mark.parametrize("field", ["both", "logprobs", "entropy"])
@pytest.mark.parametrize(("temperature", "chunk_size"), [(1.0, 256), (0.7, 4), (1.3, 1)])
def test_values_and_gradients_equal_autograd(
    model: nn.Module, field: str, temperature: float, chunk_size: int
) -> None:
    assert_identity(model, field, temperature, chunk_size)


@pytest.mark.parametrize("field", ["both", "logprobs", "entropy"])
def test_frozen_head_fused_gradient_equals_autograd(field: str) -> None:
    frozen = build_tiny_model(build_tokenizer(), dtype=torch.float64, init_std=0.5)
    frozen.lm_head.weight.requires_grad_(False)  # as under LoRA: d/dhidden is fused forward
    assert_identity(frozen, field, 0.7, 4)


def test_tied_embedding_gradient_accumulates_both_uses() -> None:
    tied = build_tiny_model(build_tokenizer(), dtype=torch.float64, init_std=0.5)
    tied.lm_head.weight = tied.model.embed_tokens.weight
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    assert_identity(tied, "both", 0.7, 4)


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "lm_head"]])
def test_lora_model_equals_autograd(targets: str | list[str]) -> None:
    from alignlib.config.schema import LoRAConfig
    from alignlib.trainer.model import apply_lora

    base = build_tiny_model(build_tokenizer(), dtype=torch.float64, init_std=0.5)
    peft = apply_lora(base, LoRAConfig(dropout=0.0, target_modules=targets)).eval()
    # all-linear leaves the head a frozen nn.Linear (fused d/dhidden); a LoRA head is a peft
    # layer, which must take the module path.
    assert is_plain_linear(peft.get_output_embeddings()) == (targets == "all-linear")
    for p in peft.parameters():  # LoRA B starts at 0: make the adapter's gradient non-trivial
        if p.requires_grad:
            p.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(4))
    assert_identity(peft, "both", 0.7, 4)


def test_chunk_size_does_not_change_anything(model: nn.Module) -> None:
    outs = [run(model, 0, chunk_size=c, temperature=0.7) for c in (1, 5, 256)]
    grads = [loss_grads(model, out, "both") for out in outs]
    for out, grad in zip(outs[1:], grads[1:], strict=True):
        for a, b in zip(out, outs[0], strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
        for name, g in grad.items():
            torch.testing.assert_close(g, grads[0][name], atol=1e-12, rtol=1e-12)


def saved_vocab_tensors(model: nn.Module, **kwargs) -> list[torch.Size]:
    """Shapes of saved-for-backward tensors with a vocabulary axis, other than parameters."""
    params = {p.data_ptr() for p in model.parameters()}
    found: list[torch.Size] = []

    def pack(t: Tensor) -> Tensor:
        if model.config.vocab_size in t.shape and t.data_ptr() not in params:
            found.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(model, 0, chunk_size=4, **kwargs)
    return found


def test_backward_keeps_no_logits(model: nn.Module) -> None:
    assert saved_vocab_tensors(model) == []


def test_the_hook_sees_logits_on_the_module_path(model: nn.Module) -> None:
    handle = model.lm_head.register_forward_hook(lambda *_: None)  # not a plain Linear anymore
    try:
        assert saved_vocab_tensors(model), "the check must be able to fail"
        assert_identity(model, "both", 0.7, 4)  # and the module path is still exact
    finally:
        handle.remove()


@pytest.mark.parametrize("fuse", [False, True])
def test_linear_kernel_passes_gradcheck(fuse: bool) -> None:
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(7, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 4, generator=gen, dtype=torch.float64, requires_grad=not fuse)
    bias = torch.randn(9, generator=gen, dtype=torch.float64, requires_grad=not fuse)
    targets = torch.randint(0, 9, (7,), generator=gen)

    def kernel(*tensors: Tensor) -> tuple[Tensor, Tensor]:
        h, w, b = (*tensors, weight, bias)[:3] if fuse else tensors
        return LinearLogprobEntropy.apply(h, w, b, targets, 0.7, 3, True, torch.float64, fuse)

    args = (hidden,) if fuse else (hidden, weight, bias)
    assert torch.autograd.gradcheck(kernel, args)


def test_bf16_autocast_matches_the_module_path() -> None:
    fp32 = build_tiny_model(build_tokenizer(), init_std=0.5).train()
    results = []
    for hooked in (False, True):
        handle = fp32.lm_head.register_forward_hook(lambda *_: None) if hooked else None
        fp32.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp, ent = run(fp32, 0, chunk_size=4, temperature=0.7)
        (lp.sum() + ent.sum()).backward()
        results.append((lp.detach(), fp32.lm_head.weight.grad, fp32.model.norm.weight.grad))
        handle.remove() if handle else None
    (lp, w, n), (lp_ref, w_ref, n_ref) = results
    assert lp.dtype == torch.float32 and w.dtype == torch.float32
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=0)  # the same bf16 logits
    torch.testing.assert_close(w, w_ref, atol=2e-2 * w_ref.abs().max(), rtol=0)
    torch.testing.assert_close(n, n_ref, atol=2e-2 * n_ref.abs().max(), rtol=0)
