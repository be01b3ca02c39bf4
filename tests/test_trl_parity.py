"""DPO-family loss and gradient equal TRL 1.16's, through ``DPOTrainer._compute_loss`` (the only
oracle TRL 1.16 has: its loss is inline in that private method), called with a stand-in ``self``
and a stand-in model that returns fixed per-token log-probs."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignlib import algorithms
from alignlib.estimator import NLL, Batch, DPOWeights, Role, Rows, UnifiedEstimator

trl = pytest.importorskip("trl")
if trl.__version__ != "1.16.0":
    pytest.skip(
        f"the oracle harness targets trl 1.16.0's private DPOTrainer._compute_loss; "
        f"found trl {trl.__version__}",
        allow_module_level=True,
    )
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402

PAIRS, WIDTH = 5, 10


def trl_loss(
    log_probs: torch.Tensor,
    completion_mask: torch.Tensor,
    ref: torch.Tensor,
    log_sum_sq_probs: torch.Tensor | None = None,
    **cfg,
):
    """TRL's loss for per-token log-probs [2B, T-1] laid out [chosen; rejected]. ``ref``: the
    reference's sequence sums [2B] (precomputed), or its per-token log-probs [2B, T-1], which
    a stand-in reference model returns to TRL's own reference pass (which applies ld_alpha).
    ``log_sum_sq_probs``: what the policy's fused head returns for WPO (default zeros)."""
    rows = log_probs.shape[0]
    per_token = ref.dim() == 2
    metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    accelerator = SimpleNamespace(
        device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x
    )
    settings = {
        "f_divergence_type": "reverse_kl",
        "f_alpha_divergence_coef": 1.0,
        "label_smoothing": 0.0,
        "args": SimpleNamespace(
            discopop_tau=cfg.pop("discopop_tau", 0.05), gradient_checkpointing_kwargs=None
        ),
    }
    model = torch.nn.Module()  # in training mode; TRL asks whether it is a peft model
    model.is_gradient_checkpointing = False
    stub = SimpleNamespace(
        model=model,
        ref_model=lambda **_: SimpleNamespace(log_probs=ref),
        accelerator=accelerator,
        aux_loss_enabled=False,
        precompute_ref_logps=not per_token,
        _metrics=metrics,
        _total_train_tokens=0,
        _tp_size=1,
        **({"ld_alpha": None, "use_weighting": False} | settings | cfg),
    )
    zeros = torch.zeros_like(log_probs)
    outputs = SimpleNamespace(
        log_probs=log_probs,
        entropy=zeros,
        mean_logits=zeros,
        log_sum_sq_probs=zeros if log_sum_sq_probs is None else log_sum_sq_probs,
        is_top1=torch.zeros_like(log_probs, dtype=torch.bool),
        aux_loss=None,
    )
    inputs = {
        "input_ids": torch.ones(rows, WIDTH, dtype=torch.long),
        "attention_mask": torch.ones(rows, WIDTH, dtype=torch.long),
        "completion_mask": completion_mask,
    }
    if not per_token:
        inputs |= {"ref_chosen_logps": ref[: rows // 2], "ref_rejected_logps": ref[rows // 2 :]}
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


def same_loss(name: str, **params):
    """A preset whose TRL ``loss_type`` has the preset's own name."""
    return lambda beta: algorithms.get(name, beta=beta, **params)


# case -> (our estimator given β, TRL loss_types, loss_weights, other DPOTrainer settings)
CASES = {
    "sigmoid": (same_loss("dpo"), ["sigmoid"], [1.0], {}),
    "hinge": (same_loss("hinge"), ["hinge"], [1.0], {}),
    "ipo": (same_loss("ipo"), ["ipo"], [1.0], {}),
    "sigmoid+sft": (
        lambda beta: (
            algorithms.get("dpo", beta=beta)
            + UnifiedEstimator(terms=[NLL(coef=0.5, rows=Rows.of(Role.CHOSEN))])
        ),
        ["sigmoid", "sft"],
        [1.0, 0.5],
        {},
    ),
    "sigmoid_norm": (  # no preset: DPO's weights on length-averaged log-ratios, by components
        lambda beta: UnifiedEstimator(
            advantage=DPOWeights(beta),
            likelihood="sequence-mean",
            aggregation="pair-mean",
            rows=Rows.of(Role.CHOSEN, Role.REJECTED),
        ),
        ["sigmoid_norm"],
        [1.0],
        {},
    ),
    "forward_kl": (
        same_loss("dpo", divergence="forward_kl"),
        ["sigmoid"],
        [1.0],
        {"f_divergence_type": "forward_kl"},
    ),
    "js_divergence": (
        same_loss("dpo", divergence="js"),
        ["sigmoid"],
        [1.0],
        {"f_divergence_type": "js_divergence"},
    ),
    "alpha_divergence": (  # TRL's coefficient is 1 − the paper's α
        same_loss("dpo", divergence="alpha", divergence_alpha=0.3),
        ["sigmoid"],
        [1.0],
        {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.7},
    ),
    "robust": (
        same_loss("robust", label_smoothing=0.2),
        ["robust"],
        [1.0],
        {"label_smoothing": 0.2},
    ),
    "exo_pair": (
        same_loss("exo_pair", label_smoothing=1e-3),
        ["exo_pair"],
        [1.0],
        {"label_smoothing": 1e-3},
    ),
    "nca_pair": (same_loss("nca_pair"), ["nca_pair"], [1.0], {}),
    "bco_pair": (same_loss("bco_pair"), ["bco_pair"], [1.0], {}),
    "sppo_hard": (same_loss("sppo_hard"), ["sppo_hard"], [1.0], {}),
    "apo_zero": (same_loss("apo_zero"), ["apo_zero"], [1.0], {}),
    "apo_down": (same_loss("apo_down"), ["apo_down"], [1.0], {}),
    "discopop": (same_loss("discopop", tau=0.3), ["discopop"], [1.0], {"discopop_tau": 0.3}),
    "aot": (same_loss("aot", label_smoothing=0.1), ["aot"], [1.0], {"label_smoothing": 0.1}),
    "aot_unpaired": (same_loss("aot_unpaired"), ["aot_unpaired"], [1.0], {}),
    "mpo": (same_loss("mpo"), ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], {}),
    "mpo_mix": (  # MPO-style mixture in TRL's loss_weights: 0.8·sigmoid + 0.2·bco_pair
        lambda beta: (
            0.8 * algorithms.get("dpo", beta=beta) + 0.2 * algorithms.get("bco_pair", beta=beta)
        ),
        ["sigmoid", "bco_pair"],
        [0.8, 0.2],
        {},
    ),
}


LOOSER = {  # case -> (relative loss, relative gradient) tolerance where TRL computes in float32
    "exo_pair": (1e-6, 1e-8),  # TRL makes ε a float32 tensor: log ε, log(1 − ε) in float32
    "alpha_divergence": (1e-5, 1e-6),  # TRL's alpha score runs in float16/32 only (per-dtype clamp)
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_matches_trl(case: str, beta: float) -> None:
    build, loss_types, loss_weights, settings = CASES[case]
    for seed in range(3):
        completion_mask, token_mask, values, ref_sums = make_inputs(seed)
        # TRL's IPO divides the summed log-ratio by the completion length; our ipo preset
        # averages policy and reference log-probs per token: equal with an evenly spread ref.
        ref_tokens = reference_tokens(token_mask, ref_sums, spread=case == "ipo")
        got = ours(values, token_mask, ref_tokens, build(beta))
        float32 = case == "alpha_divergence"
        want = theirs(
            values.float() if float32 else values,
            completion_mask,
            ref_sums.float() if float32 else ref_sums,
            beta=beta,
            loss_types=loss_types,
            loss_weights=loss_weights,
            **settings,
        )
        tolerance, grad_tolerance = LOOSER.get(case, (1e-10, 1e-12))
        assert abs(float(got[0]) - float(want[0])) < tolerance * max(1.0, abs(float(want[0])))
        # TRL's fused head makes non-completion log-probs constant zeros (no gradient to the
        # model), while this stand-in leaf receives one there: compare on completion tokens.
        scale = float((want[1] * token_mask).abs().max())
        error = float(((got[1] - want[1]) * token_mask).abs().max())
        assert error < grad_tolerance * max(1.0, scale)
        assert scale > 0
