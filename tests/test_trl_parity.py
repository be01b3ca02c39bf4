"""DPO-family loss and gradient equal TRL 1.16's, through ``DPOTrainer._compute_loss`` (the only
oracle TRL 1.16 has: its loss is inline in that private method), called with a stand-in ``self``
and a stand-in model that returns fixed per-token log-probs."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignlib import algorithms
from alignlib.estimator import NLL, Batch, Role, Rows, UnifiedEstimator

trl = pytest.importorskip("trl")
if trl.__version__ != "1.16.0":
    pytest.skip(
        f"the oracle harness targets trl 1.16.0's private DPOTrainer._compute_loss; "
        f"found trl {trl.__version__}",
        allow_module_level=True,
    )
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402

PAIRS, WIDTH = 5, 10


def trl_loss(log_probs: torch.Tensor, completion_mask: torch.Tensor, ref: torch.Tensor, **cfg):
    """TRL's loss for per-token log-probs [2B, T-1] laid out [chosen; rejected]."""
    rows = log_probs.shape[0]
    metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    accelerator = SimpleNamespace(
        device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x
    )
    stub = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=accelerator,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        f_alpha_divergence_coef=1.0,
        label_smoothing=0.0,
        use_weighting=False,
        args=SimpleNamespace(discopop_tau=0.05),
        _metrics=metrics,
        _total_train_tokens=0,
        _tp_size=1,
        **cfg,
    )
    zeros = torch.zeros_like(log_probs)
    outputs = SimpleNamespace(
        log_probs=log_probs,
        entropy=zeros,
        mean_logits=zeros,
        log_sum_sq_probs=zeros,
        is_top1=torch.zeros_like(log_probs, dtype=torch.bool),
        aux_loss=None,
    )
    inputs = {
        "input_ids": torch.ones(rows, WIDTH, dtype=torch.long),
        "attention_mask": torch.ones(rows, WIDTH, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref[: rows // 2],
        "ref_rejected_logps": ref[rows // 2 :],
    }
    return DPOTrainer._compute_loss(stub, lambda **_: outputs, inputs, return_outputs=False)


def make_inputs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    completion_mask = torch.zeros(2 * PAIRS, WIDTH, dtype=torch.long)
    for i in range(2 * PAIRS):
        start = int(torch.randint(1, 4, (1,), generator=gen))
        end = int(torch.randint(start + 1, WIDTH + 1, (1,), generator=gen))
        completion_mask[i, start:end] = 1
    token_mask = completion_mask[:, 1:].to(torch.float64)  # TRL scores label t+1 at position t
    values = -torch.rand(2 * PAIRS, WIDTH - 1, generator=gen, dtype=torch.float64) * 4
    ref = -torch.rand(2 * PAIRS, generator=gen, dtype=torch.float64) * 20
    return completion_mask, token_mask, values * token_mask, ref


def ours(values, token_mask, ref_tokens, estimator: UnifiedEstimator):
    logprobs = values.clone().requires_grad_(True)
    batch = Batch(
        logprobs=logprobs,
        mask=token_mask,
        ref_logprobs=ref_tokens,
        roles=torch.tensor([int(Role.CHOSEN)] * PAIRS + [int(Role.REJECTED)] * PAIRS),
        pair_ids=torch.arange(PAIRS).repeat(2),
    )
    loss = estimator(batch).loss
    return loss.detach(), torch.autograd.grad(loss, logprobs)[0]


def reference_tokens(token_mask, ref_sums, spread: bool):
    """Per-token reference log-probs whose row sums are ``ref_sums``: all on the first
    completion token, or spread evenly (so that length-averaged sums match TRL's IPO)."""
    if spread:
        return token_mask * (ref_sums.unsqueeze(-1) / token_mask.sum(-1, keepdim=True))
    tokens = torch.zeros_like(token_mask)
    tokens[torch.arange(token_mask.shape[0]), token_mask.argmax(-1)] = ref_sums
    return tokens


def theirs(values, completion_mask, ref_sums, **cfg):
    log_probs = values.clone().requires_grad_(True)
    loss = trl_loss(log_probs, completion_mask, ref_sums, **cfg)
    return loss.detach(), torch.autograd.grad(loss, log_probs)[0]


CASES = {
    "sigmoid": (lambda beta: algorithms.get("dpo", beta=beta), ["sigmoid"], [1.0]),
    "hinge": (lambda beta: algorithms.get("hinge", beta=beta), ["hinge"], [1.0]),
    "ipo": (None, ["ipo"], [1.0]),
    "sigmoid+sft": (
        lambda beta: (
            algorithms.get("dpo", beta=beta)
            + UnifiedEstimator(terms=[NLL(coef=0.5, rows=Rows.of(Role.CHOSEN))])
        ),
        ["sigmoid", "sft"],
        [1.0, 0.5],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_matches_trl(case: str, beta: float) -> None:
    build, loss_types, loss_weights = CASES[case]
    for seed in range(3):
        completion_mask, token_mask, values, ref_sums = make_inputs(seed)
        # TRL's IPO divides the summed log-ratio by the completion length; our ipo preset
        # averages policy and reference log-probs per token: equal with an evenly spread ref.
        estimator = algorithms.get("ipo", beta=beta) if case == "ipo" else build(beta)
        ref_tokens = reference_tokens(token_mask, ref_sums, spread=case == "ipo")
        got = ours(values, token_mask, ref_tokens, estimator)
        want = theirs(
            values,
            completion_mask,
            ref_sums,
            beta=beta,
            loss_types=loss_types,
            loss_weights=loss_weights,
        )
        assert abs(float(got[0]) - float(want[0])) < 1e-10
        # TRL's fused head makes non-completion log-probs constant zeros (no gradient to the
        # model), while this stand-in leaf receives one there: compare on completion tokens.
        assert ((got[1] - want[1]) * token_mask).abs().max() < 1e-12
        assert (want[1] * token_mask).abs().max() > 0
