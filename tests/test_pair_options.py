"""LD-DPO (`algorithm.ld_alpha`) and WPO (`algorithm.wpo`) for the DPO family: equal to TRL
1.16's DPOTrainer (`ld_alpha`, `use_weighting`) in loss and gradient, equal to their papers'
formulas written here per row in float64, unchanged by micro-batching; the trainer's log Σπ²
is the model's own; runs train; misuse is one line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from test_trainer import config_file, datasets
from test_trl_parity import PAIRS, make_inputs, trl_loss

from alignlib.cli import main
from alignlib.config import load_config
from alignlib.config.estimator import build_estimator
from alignlib.config.schema import AlgorithmConfig
from alignlib.estimator import Batch, Role, UnifiedEstimator
from alignlib.testing import build_tiny_model, build_tokenizer
from alignlib.trainer.head_hooks import log_sum_sq_probs
from alignlib.trainer.loop import Trainer

pytest.importorskip("trl")


def estimator(name: str, beta: float, **options: Any) -> UnifiedEstimator:
    return build_estimator(AlgorithmConfig(name=name, params={"beta": beta}, **options))


def pair_batch(values: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor, sq: torch.Tensor):
    return Batch(
        logprobs=values.clone().requires_grad_(True),
        mask=mask,
        ref_logprobs=ref,
        log_sum_sq_probs=sq,
        roles=torch.tensor([int(Role.CHOSEN)] * PAIRS + [int(Role.REJECTED)] * PAIRS),
        pair_ids=torch.arange(PAIRS).repeat(2),
    )


def inputs(seed: int) -> tuple[torch.Tensor, ...]:
    completion_mask, token_mask, values, _ = make_inputs(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    ref = -torch.rand(values.shape, generator=gen, dtype=values.dtype) * 4 * token_mask
    sq = -torch.rand(values.shape, generator=gen, dtype=values.dtype) * 3
    return completion_mask, token_mask, values, ref, sq


def trl_with_reference_model(values, completion_mask, ref, sq, **cfg):
    """TRL's loss and gradient, its reference pass reading ``ref`` per token (so that it
    applies ld_alpha to the reference too), its fused head giving ``sq`` as log Σπ²."""
    leaf = values.clone().requires_grad_(True)
    loss = trl_loss(leaf, completion_mask, ref, log_sum_sq_probs=sq, **cfg)
    return loss.detach(), torch.autograd.grad(loss, leaf)[0]


CASES = {  # our preset -> TRL loss_type
    "dpo": "sigmoid",
    "hinge": "hinge",
    "robust": "robust",
    "bco_pair": "bco_pair",
    "apo_zero": "apo_zero",
    "ipo": "ipo",
}


@pytest.mark.parametrize(
    ("ld_alpha", "wpo"), [(0.0, False), (0.4, False), (None, True), (0.7, True)]
)
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_trl(name: str, ld_alpha: float | None, wpo: bool) -> None:
    settings = {"label_smoothing": 0.2} if name == "robust" else {}
    for seed in range(2):
        completion_mask, token_mask, values, ref, sq = inputs(seed)
        params = {"beta": 0.3, **settings}
        ours = build_estimator(
            AlgorithmConfig(name=name, params=params, ld_alpha=ld_alpha, wpo=wpo)
        )
        batch = pair_batch(values, token_mask, ref, sq)
        loss = ours(batch).loss
        got = loss.detach(), torch.autograd.grad(loss, batch.logprobs)[0]
        trl_settings = {"beta": 0.3, "loss_types": [CASES[name]], "loss_weights": [1.0]}
        trl_settings |= {"ld_alpha": ld_alpha, "use_weighting": wpo, **settings}
        if name == "hinge" and wpo:  # TRL 1.16 scales relu's output in place: no backward
            with pytest.raises(RuntimeError, match="inplace operation"):
                trl_with_reference_model(values, completion_mask, ref, sq, **trl_settings)
            return
        want = trl_with_reference_model(values, completion_mask, ref, sq, **trl_settings)
        assert abs(float(got[0]) - float(want[0])) < 1e-10 * max(1.0, abs(float(want[0])))
        scale = float((want[1] * token_mask).abs().max())
        assert float(((got[1] - want[1]) * token_mask).abs().max()) < 1e-12 * max(1.0, scale)
        assert scale > 0


def per_row_dpo(values, mask, ref, sq, beta: float, alpha: float | None, wpo: bool):
    """The papers' DPO with LD-DPO's likelihood and WPO's weight, one pair at a time."""
    losses = []
    for pair in range(PAIRS):
        rows = (pair, pair + PAIRS)
        tokens = [mask[r].nonzero().flatten().tolist() for r in rows]
        shared = min(len(t) for t in tokens)

        def likelihood(x: torch.Tensor, r: int, own: list[int], shared: int) -> torch.Tensor:
            weights = [1.0 if k < shared or alpha is None else alpha for k in range(len(own))]
            return sum(w * x[r, t] for w, t in zip(weights, own, strict=True))

        u = [
            likelihood(values, r, tokens[i], shared) - likelihood(ref, r, tokens[i], shared)
            for i, r in enumerate(rows)
        ]
        loss = -torch.nn.functional.logsigmoid(beta * (u[0] - u[1]))
        if wpo:
            for i, r in enumerate(rows):
                mean = sum(float(values[r, t] - sq[r, t]) for t in tokens[i]) / len(tokens[i])
                loss = loss * math.exp(mean)
        losses.append(loss)
    return sum(losses) / PAIRS


@pytest.mark.parametrize(("alpha", "wpo"), [(0.3, False), (None, True), (0.5, True)])
def test_equals_the_papers_formulas_and_does_not_depend_on_micro_batching(
    alpha: float | None, wpo: bool
) -> None:
    _, mask, values, ref, sq = inputs(5)
    leaf = values.clone().requires_grad_(True)
    want = per_row_dpo(leaf, mask, ref, sq, 0.2, alpha, wpo)
    want_grad = torch.autograd.grad(want, leaf)[0]
    ours = estimator("dpo", 0.2, ld_alpha=alpha, wpo=wpo)
    batch = pair_batch(values, mask, ref, sq)
    loss = ours(batch).loss
    torch.testing.assert_close(loss.detach(), want.detach(), rtol=1e-12, atol=1e-14)
    grad = torch.autograd.grad(loss, batch.logprobs)[0]
    torch.testing.assert_close(grad * mask, want_grad * mask, rtol=1e-12, atol=1e-14)
    # Micro-batches of whole pairs, each its own forward: the same gradient summed.
    prepared = ours.prepare(pair_batch(values, mask, ref, sq))
    total = torch.zeros_like(values)
    for part in prepared.split(3):
        part = part.replace(logprobs=part.logprobs.detach().requires_grad_(True))
        part_loss = ours(part).loss
        part_grad = torch.autograd.grad(part_loss, part.logprobs)[0]
        # The rows of this part in the whole batch, by role and pair id.
        order = torch.where(part.roles == int(Role.CHOSEN), part.pair_ids, part.pair_ids + PAIRS)
        total[order] += part_grad
    torch.testing.assert_close(total * mask, want_grad * mask, rtol=1e-10, atol=1e-14)


def test_the_trainers_log_sum_sq_is_the_models_own() -> None:
    """From a no-grad pass and from the training forward itself (chunked: a hooked head)."""
    from alignlib.device import Placement
    from alignlib.trainer.step import HostRows, LogprobKernel

    torch.manual_seed(0)
    model = build_tiny_model(build_tokenizer(), dtype=torch.float64, init_std=0.5)
    ids = torch.randint(3, 200, (3, 9))
    attention = torch.ones_like(ids)
    attention[2, 6:] = 0
    mask = torch.zeros(3, 9)
    mask[:, 4:] = 1
    mask[2, 6:] = 0
    kernel = LogprobKernel(model, Placement.resolve("cpu", "fp32"), chunk_size=3)
    rows, reduce = HostRows(ids, attention, mask), log_sum_sq_probs(1.0)
    passed = kernel.every_row(rows, 2, statistic=reduce).statistic
    trained = kernel(rows, torch.arange(3), grad=True, statistic=reduce)
    assert trained.logprobs.requires_grad and trained.statistic is not None
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits.double()
    want = torch.logsumexp(2 * torch.log_softmax(logits, -1), -1)[:, :-1]  # position t scores t+1
    scored = mask[:, 1:] > 0
    assert passed is not None
    for got in (passed, trained.statistic):
        torch.testing.assert_close(got[:, 1:][scored].double(), want[scored], rtol=1e-5, atol=1e-6)


def test_a_training_step_weighs_pairs_by_the_models_own_wpo_weights(tmp_path: Path) -> None:
    from alignlib.trainer.update import accumulate

    data = datasets(tmp_path)["preference"]
    path = config_file(tmp_path, data, "dpo")
    trainer = Trainer(load_config(path, ["algorithm.wpo=true", "train.micro_batch_size=1"]))
    source = trainer.source()
    state = trainer.state(source)
    source.prepare(state)
    batch = next(iter(source.batches(1)))
    metrics, _ = accumulate(source.kernel, state.estimator, batch)
    rows, fields = batch.rows, batch.fields
    with torch.no_grad():
        logits = trainer.model(input_ids=rows.input_ids, attention_mask=rows.attention).logits
    logp = torch.log_softmax(logits.double(), -1)
    chosen = logp[:, :-1].gather(-1, rows.input_ids[:, 1:, None]).squeeze(-1)
    sq = torch.logsumexp(2 * logp[:, :-1], -1)
    mask = fields.mask[:, 1:].double()
    w = torch.exp(((chosen - sq) * mask).sum(-1) / mask.sum(-1))
    roles, ids = fields.roles, fields.pair_ids
    pairs = [
        float(
            w[(roles == int(Role.CHOSEN)) & (ids == p)]
            * w[(roles == int(Role.REJECTED)) & (ids == p)]
        )
        for p in ids.unique().tolist()
    ]
    assert metrics["dpo/wpo_weight"] == pytest.approx(sum(pairs) / len(pairs), rel=1e-5)
    assert len(set(pairs)) > 1


@pytest.mark.parametrize(
    "options", [{"wpo": True}, {"ld_alpha": 0.5}, {"wpo": True, "ld_alpha": 0.3}]
)
def test_dpo_with_the_options_trains(tmp_path: Path, options: dict[str, Any]) -> None:
    data = datasets(tmp_path)["preference"]
    overrides = [f"algorithm.{key}={str(value).lower()}" for key, value in options.items()]
    result = Trainer(load_config(config_file(tmp_path, data, "dpo"), overrides)).train()
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] - 1e-3, losses
    card = (result.output_dir / "final" / "README.md").read_text()
    assert ("WPO weights" in card) == bool(options.get("wpo"))
    assert ("LD-DPO α=" in card) == ("ld_alpha" in options)
    if options.get("wpo"):
        weights = [h["dpo/wpo_weight"] for h in result.history]
        assert all(0 < w < math.inf for w in weights) and len(set(weights)) > 1, weights


@pytest.mark.parametrize(
    ("algorithm", "message"),
    [
        ({"name": "sft", "ld_alpha": 0.5}, "algorithm.ld_alpha: applies to preference-pair losses"),
        ({"name": "aot", "wpo": True}, "algorithm.wpo: AOT sorts margins across the mini-batch"),
        ({"name": "dpo", "ld_alpha": 1.5}, "algorithm.ld_alpha"),
    ],
)
def test_misuse_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], algorithm: dict[str, Any], message: str
) -> None:
    data = datasets(tmp_path)["preference"]
    path = config_file(tmp_path, data, algorithm.pop("name"))
    overrides = [f"algorithm.{key}={str(value).lower()}" for key, value in algorithm.items()]
    assert main(["train", str(path), *overrides]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0], err


def test_wpo_with_packing_trains_padded_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = datasets(tmp_path)["preference"]
    path = config_file(tmp_path, data, "dpo")
    runs = []
    for packing in ("false", "true"):
        overrides = ["algorithm.wpo=true", f"train.packing={packing}", "train.max_steps=2"]
        overrides.append(f"output_dir={tmp_path / f'packing-{packing}'}")
        runs.append(Trainer(load_config(path, overrides)).train().history)
    assert "WPO reads log Σπ² off the LM head" in capsys.readouterr().err
    for padded, packed in zip(*runs, strict=True):
        assert (
            packed["loss"] == padded["loss"]
            and packed["dpo/wpo_weight"] == padded["dpo/wpo_weight"]
        )
