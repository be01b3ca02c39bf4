"""KTO's and APO-zero-unpaired's loss and gradient equal TRL 1.16's
``KTOTrainer._compute_loss`` (its loss is inline in that private method), called with a
stand-in ``self`` and a stand-in model that returns fixed per-token log-probs for the
completions and for the mismatched KL completions. One micro-batch and one process, where TRL's
per-micro-batch reference point z₀ is alignlib's per-mini-batch one."""

from __future__ import annotations

from collections import defaultdict
from types import MethodType, SimpleNamespace

import pytest
import torch

from alignlib import algorithms
from alignlib.estimator import Batch, Role

trl = pytest.importorskip("trl")
if trl.__version__ != "1.16.0":
    pytest.skip(
        f"the harness targets trl 1.16.0's private KTOTrainer._compute_loss, found "
        f"{trl.__version__}",
        allow_module_level=True,
    )
from trl.trainer.kto_trainer import KTOTrainer  # noqa: E402

EXAMPLES, WIDTH = 6, 10


def make_inputs(seed: int, kl_shift: float) -> dict[str, torch.Tensor]:
    """Completion masks, labels, per-token log-probs (zero off the completion, as TRL's fused
    head returns them) and summed reference log-probs, for the rows and their KL rows."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(2 * EXAMPLES, WIDTH, dtype=torch.long)
    for row in range(2 * EXAMPLES):
        start = int(torch.randint(1, 4, (1,), generator=gen))
        end = int(torch.randint(start + 1, WIDTH + 1, (1,), generator=gen))
        masks[row, start:end] = 1
    scored = masks[:, 1:].to(torch.float64)  # TRL scores label t+1 at position t
    values = -torch.rand(2 * EXAMPLES, WIDTH - 1, generator=gen, dtype=torch.float64) * 3
    ref = (values * scored).sum(-1) + torch.randn(2 * EXAMPLES, generator=gen, dtype=torch.float64)
    ref[EXAMPLES:] -= kl_shift * scored[EXAMPLES:].sum(-1)  # KL rows: policy above reference
    labels = torch.randint(0, 2, (EXAMPLES,), generator=gen).bool()
    labels[:2] = torch.tensor([True, False])
    return {
        "masks": masks,
        "scored": scored,
        "values": values * scored,
        "ref": ref,
        "labels": labels,
    }


def theirs(data: dict, beta: float, w_d: float, w_u: float, loss_type: str = "kto"):
    leaf = data["values"].clone().requires_grad_(True)
    main, kl = leaf[:EXAMPLES], leaf[EXAMPLES:]
    masks = data["masks"]
    inputs = {
        "input_ids": torch.ones(EXAMPLES, WIDTH, dtype=torch.long),
        "attention_mask": torch.ones(EXAMPLES, WIDTH, dtype=torch.long),
        "completion_mask": masks[:EXAMPLES],
        "KL_input_ids": torch.full((EXAMPLES, WIDTH), 2, dtype=torch.long),
        "KL_attention_mask": torch.ones(EXAMPLES, WIDTH, dtype=torch.long),
        "KL_completion_mask": masks[EXAMPLES:],
        "label": data["labels"],
        "ref_logps": data["ref"][:EXAMPLES],
        "ref_KL_logps": data["ref"][EXAMPLES:],
    }

    def model(input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        logps = kl if bool((input_ids == 2).all()) else main
        zeros = torch.zeros_like(logps)
        return SimpleNamespace(log_probs=logps, entropy=zeros, mean_logits=zeros, aux_loss=None)

    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x)
    stub = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=accelerator,
        calculate_KL=loss_type == "kto",
        precompute_ref_logps=True,
        aux_loss_enabled=False,
        loss_type=loss_type,
        beta=beta,
        desirable_weight=w_d,
        undesirable_weight=w_u,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    stub._compute_kl_logps = MethodType(KTOTrainer._compute_kl_logps, stub)
    loss = KTOTrainer._compute_loss(stub, model, inputs, return_outputs=False)
    return loss.detach(), torch.autograd.grad(loss, leaf)[0], stub._metrics["train"]["kl"][0]


def ours(data: dict, beta: float, w_d: float, w_u: float, preset: str = "kto"):
    leaf = data["values"].clone().requires_grad_(True)
    scored = data["scored"]
    ref_tokens = torch.zeros_like(scored)  # each row's reference sum on its first token
    ref_tokens[torch.arange(2 * EXAMPLES), scored.argmax(-1)] = data["ref"]
    main = torch.where(data["labels"], int(Role.CHOSEN), int(Role.REJECTED))
    batch = Batch(
        logprobs=leaf,
        mask=scored,
        ref_logprobs=ref_tokens,
        roles=torch.cat([main, torch.full((EXAMPLES,), int(Role.KL))]),
        pair_ids=torch.arange(EXAMPLES).repeat(2),
    )
    if preset != "kto":  # no KL rows: the data builds none for a fixed reference point
        batch = batch.select(torch.arange(EXAMPLES))
        leaf_rows = leaf[:EXAMPLES]
        batch = batch.replace(logprobs=leaf_rows)
    estimator = algorithms.get(preset, beta=beta, desirable_weight=w_d, undesirable_weight=w_u)
    out = estimator(batch)
    return (
        out.loss.detach(),
        torch.autograd.grad(out.loss, leaf)[0],
        float(out.metrics[f"{preset}/kl"]),
    )


@pytest.mark.parametrize(
    ("beta", "w_d", "w_u", "kl_shift"),
    [(0.1, 1.0, 1.0, 0.3), (0.5, 1.33, 1.0, 0.3), (0.1, 1.0, 1.0, -0.5)],
)
def test_kto_matches_trl(beta: float, w_d: float, w_u: float, kl_shift: float) -> None:
    for seed in range(3):
        data = make_inputs(seed, kl_shift)
        want_loss, want_grad, want_kl = theirs(data, beta, w_d, w_u)
        got_loss, got_grad, got_kl = ours(data, beta, w_d, w_u)
        assert abs(float(got_loss) - float(want_loss)) < 1e-12
        # TRL sums every position of the head's output (zero and constant off the completion in
        # a real model): compare the gradients where a parameter can move them.
        want_grad = want_grad * data["scored"]
        assert (got_grad - want_grad).norm() / want_grad.norm() < 1e-12
        assert abs(got_kl - want_kl) < 1e-12
        assert (want_kl > 0) == (kl_shift > 0)  # both sides of the clamp are exercised


@pytest.mark.parametrize(("beta", "w_d", "w_u"), [(0.1, 1.0, 1.0), (0.5, 1.33, 0.8)])
def test_apo_zero_unpaired_matches_trl(beta: float, w_d: float, w_u: float) -> None:
    """TRL's loss_type="apo_zero_unpaired": no KL term, z₀ = 0; alignlib's batch has no KL
    rows at all."""
    for seed in range(3):
        data = make_inputs(seed, kl_shift=0.3)  # a KL shift TRL must not read
        want_loss, want_grad, want_kl = theirs(data, beta, w_d, w_u, "apo_zero_unpaired")
        got_loss, got_grad, got_kl = ours(data, beta, w_d, w_u, "apo_zero_unpaired")
        assert abs(float(got_loss) - float(want_loss)) < 1e-12
        want_grad = (want_grad * data["scored"])[:EXAMPLES]
        assert (got_grad[:EXAMPLES] - want_grad).norm() / want_grad.norm() < 1e-12
        assert got_kl == want_kl == 0.0
        kto_loss = ours(data, beta, w_d, w_u)[0]
        assert abs(float(kto_loss) - float(got_loss)) > 1e-8  # z₀ > 0 would change it
