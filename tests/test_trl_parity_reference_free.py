"""SimPO, CPO and ORPO equal TRL 1.16's ``CPOTrainer`` / ``ORPOTrainer`` (trl.experimental) end to
end: both sides get the same logits [2P, T, V] from a stand-in model; TRL computes its loss through
``get_batch_loss_metrics`` (its own label shift, masking, averaging and NLL), alignlib through
per-token log-probs and the preset. Loss and the gradient with respect to the logits must agree
to float64 precision."""

from __future__ import annotations

import warnings
from types import MethodType, SimpleNamespace

import pytest
import torch

from alignlib import algorithms
from alignlib.estimator import Batch, Role, UnifiedEstimator

trl = pytest.importorskip("trl")
if trl.__version__ != "1.16.0":
    pytest.skip(
        f"the harness targets trl 1.16.0's experimental trainers, found {trl.__version__}",
        allow_module_level=True,
    )
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from trl.experimental.cpo.cpo_trainer import CPOTrainer
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

PAIRS, WIDTH, VOCAB = 4, 10, 11


def token_rows(gen: torch.Generator, prompt_tokens: int | None) -> dict[str, torch.Tensor]:
    """input ids, attention mask and labels (−100 on prompt and padding) for PAIRS rows."""
    ids = torch.randint(1, VOCAB, (PAIRS, WIDTH), generator=gen)
    attention = torch.zeros(PAIRS, WIDTH, dtype=torch.long)
    labels = torch.full((PAIRS, WIDTH), -100)
    for row in range(PAIRS):
        start = prompt_tokens or int(torch.randint(1, 4, (1,), generator=gen))
        end = int(torch.randint(start + 1, WIDTH + 1, (1,), generator=gen))
        attention[row, :end] = 1
        labels[row, start:end] = ids[row, start:end]
    return {"input_ids": ids * attention, "attention_mask": attention, "labels": labels}


def make_batch(seed: int, prompt_tokens: int | None) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    chosen, rejected = token_rows(gen, prompt_tokens), token_rows(gen, prompt_tokens)
    return {f"chosen_{k}": v for k, v in chosen.items()} | {
        f"rejected_{k}": v for k, v in rejected.items()
    }


def make_logits(seed: int, scale: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 100)
    return torch.randn(2 * PAIRS, WIDTH, VOCAB, generator=gen, dtype=torch.float64) * scale


def stub_trainer(trainer_class: type, **settings: object) -> SimpleNamespace:
    """The attributes ``get_batch_loss_metrics`` reads, with TRL's own methods bound to it."""
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x)
    stub = SimpleNamespace(
        accelerator=accelerator,
        is_encoder_decoder=False,
        aux_loss_enabled=False,
        pad_token_id=0,
        padding_value=0,
        label_smoothing=0.0,
        alpha=0.0,
        concatenated_inputs=trainer_class.concatenated_inputs,
        get_batch_logps=trainer_class.get_batch_logps,
        **settings,
    )
    for name in ("concatenated_forward", "cpo_loss", "odds_ratio_loss"):
        if hasattr(trainer_class, name):
            setattr(stub, name, MethodType(getattr(trainer_class, name), stub))
    return stub


def theirs(trainer_class: type, batch: dict, logits: torch.Tensor, **settings: object):
    leaf = logits.clone().requires_grad_(True)

    def model(*_: object, **__: object) -> SimpleNamespace:
        return SimpleNamespace(logits=leaf)

    stub = stub_trainer(trainer_class, **settings)
    loss, _ = trainer_class.get_batch_loss_metrics(stub, model, batch)
    return loss.detach(), torch.autograd.grad(loss, leaf)[0]


def ours(estimator: UnifiedEstimator, batch: dict, logits: torch.Tensor):
    leaf = logits.clone().requires_grad_(True)
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])
    attention = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
    logprobs = leaf[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = (labels[:, 1:] != -100).to(torch.float64)
    prompt = attention[:, 1:].to(torch.float64) - mask  # scored tokens before the response
    out = estimator(
        Batch(
            logprobs=logprobs * (mask + prompt),
            mask=mask,
            prompt_mask=prompt,
            roles=torch.tensor([int(Role.CHOSEN)] * PAIRS + [int(Role.REJECTED)] * PAIRS),
            pair_ids=torch.arange(PAIRS).repeat(2),
        )
    )
    return out.loss.detach(), torch.autograd.grad(out.loss, leaf)[0]


def assert_same(got: tuple, want: tuple, tolerance: float = 1e-10) -> None:
    """Loss and gradient equal to ``tolerance`` (relative)."""
    assert abs(float(got[0]) - float(want[0])) < tolerance * abs(float(want[0]))
    error = (got[1] - want[1]).norm() / want[1].norm()
    assert error < tolerance, f"relative gradient error {error:.2e}"


@pytest.mark.parametrize("beta, alpha", [(0.1, 1.0), (0.5, 0.3), (0.1, 0.0)])
def test_cpo_matches_trl(beta: float, alpha: float) -> None:
    for seed in range(3):
        batch, logits = make_batch(seed, prompt_tokens=None), make_logits(seed, scale=2.0)
        want = theirs(CPOTrainer, batch, logits, loss_type="sigmoid", beta=beta, cpo_alpha=alpha)
        assert_same(ours(algorithms.get("cpo", beta=beta, alpha=alpha), batch, logits), want)


@pytest.mark.parametrize("beta, gamma, alpha", [(2.0, 1.0, 0.0), (2.5, 0.3, 0.0), (2.0, 1.0, 1.0)])
def test_simpo_matches_trl_cpo_simpo(beta: float, gamma: float, alpha: float) -> None:
    for seed in range(3):
        batch, logits = make_batch(seed, prompt_tokens=None), make_logits(seed, scale=2.0)
        want = theirs(
            CPOTrainer,
            batch,
            logits,
            loss_type="simpo",
            beta=beta,
            simpo_gamma=gamma,
            cpo_alpha=alpha,
        )
        got = ours(algorithms.get("simpo", beta=beta, gamma=gamma, alpha=alpha), batch, logits)
        assert_same(got, want)


@pytest.mark.parametrize("beta, scale", [(0.1, 2.0), (0.5, 6.0)])
def test_orpo_with_prompt_loss_matches_trl_on_any_prompt(beta: float, scale: float) -> None:
    """Prompts of 1–3 tokens: ``prompt_loss`` counts the prompt's tokens in the NLL, as TRL's
    ORPOTrainer (and the released code) do; without it the two differ."""
    for seed in range(3):
        batch, logits = make_batch(seed, prompt_tokens=None), make_logits(seed, scale=scale)
        want = theirs(ORPOTrainer, batch, logits, beta=beta)
        got = ours(algorithms.get("orpo", beta=beta, prompt_loss=True), batch, logits)
        assert_same(got, want, 1e-6)
        paper = ours(algorithms.get("orpo", beta=beta), batch, logits)
        assert (paper[1] - want[1]).norm() > 1e-2 * want[1].norm()  # the prompt's gradient


@pytest.mark.parametrize("beta, scale", [(0.1, 2.0), (0.5, 6.0)])
def test_orpo_matches_trl(beta: float, scale: float) -> None:
    """A one-token prompt: TRL's ORPO NLL runs over prompt and response tokens alike (so does the
    official code unless ``--disable_prompt_loss``), alignlib's over the response; the first
    token is never a label, so with a one-token prompt both are the response NLL. ``scale`` 6
    makes some sequences likely (P near 1), where the odds differ most from P. TRL casts the
    sequence log-probs to float32 before the odds (``.float()``), hence the 1e-6 tolerance."""
    for seed in range(3):
        batch, logits = make_batch(seed, prompt_tokens=1), make_logits(seed, scale=scale)
        want = theirs(ORPOTrainer, batch, logits, beta=beta)
        assert_same(ours(algorithms.get("orpo", beta=beta), batch, logits), want, 1e-6)
