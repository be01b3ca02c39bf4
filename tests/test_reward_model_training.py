"""Training a Bradley-Terry reward model (the ``reward_model`` preset): its loss and gradient equal
TRL 1.16's ``RewardTrainer.compute_loss``, the kernel reads the score where transformers' own
classifier does, a trained model ranks its pairs and serves as a reward model, and every run it
cannot be part of is refused in one line."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from batches import rel_error
from test_trainer import PAIRS, config_file, datasets

from alignlib import algorithms
from alignlib.cli import main
from alignlib.config import load_config
from alignlib.device import Placement
from alignlib.estimator import Batch, Role
from alignlib.models import load_model_and_tokenizer
from alignlib.rewards import RewardModelScorer
from alignlib.trainer.loop import Trainer
from alignlib.trainer.packing import pack, unpack
from alignlib.trainer.scores import packed_sequence_scores
from alignlib.trainer.step import HostRows, LogprobKernel

pytestmark = pytest.mark.usefixtures("one_thread")
trl = pytest.importorskip("trl")


def trl_reward_loss(scores: torch.Tensor, margin: torch.Tensor | None, center: float | None):
    """TRL's loss for scores laid out [chosen; rejected], from a stand-in model."""
    from trl.trainer.reward_trainer import RewardTrainer

    model = SimpleNamespace(training=True)
    stub = SimpleNamespace(
        model=model,
        args=SimpleNamespace(center_rewards_coefficient=center),
        accelerator=SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    pairs = scores.shape[0] // 2
    inputs = {"attention_mask": torch.ones(2 * pairs, 3, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = margin

    def forward(**_: object) -> SimpleNamespace:
        return SimpleNamespace(logits=scores.unsqueeze(-1))

    return RewardTrainer.compute_loss(stub, forward, inputs)


@pytest.mark.skipif(trl.__version__ != "1.16.0", reason="the harness targets trl 1.16.0")
@pytest.mark.parametrize(
    ("margin", "center"), [(None, None), (0.5, None), (None, 0.01), ("column", 0.01)]
)
def test_loss_and_gradient_equal_trl_reward_trainer(margin: Any, center: float | None):
    """A constant margin is the preset's `margin`; TRL's per-row `margin` column is the rows'
    ``margins`` (the data's column)."""
    gen = torch.Generator().manual_seed(0)
    pairs, width = 5, 7
    scores = (2 * torch.randn(2 * pairs, generator=gen, dtype=torch.float64)).requires_grad_()
    lengths = torch.randint(2, width + 1, (2 * pairs,), generator=gen)
    mask = (torch.arange(width) < lengths.unsqueeze(-1)).to(torch.float64)
    rows = torch.arange(2 * pairs)
    logprobs = torch.zeros(2 * pairs, width, dtype=torch.float64).index_put(
        (rows, lengths - 1), scores
    )  # the kernel's layout: r at each row's last token
    column = torch.randn(pairs, generator=gen, dtype=torch.float64)
    batch = Batch(
        logprobs=logprobs,
        mask=mask,
        roles=torch.tensor([int(Role.CHOSEN)] * pairs + [int(Role.REJECTED)] * pairs),
        pair_ids=torch.arange(pairs).repeat(2),
        margins=column.repeat(2) if margin == "column" else None,
    )
    constant = margin if isinstance(margin, float) else 0.0
    ours = algorithms.get("reward_model", margin=constant, center_coef=center)(batch).loss
    per_pair = {None: None, "column": column}.get(margin, torch.full((pairs,), constant))
    theirs = trl_reward_loss(scores, per_pair, center)
    assert abs(float(ours) - float(theirs)) < 1e-12
    got, want = (torch.autograd.grad(loss, scores)[0] for loss in (ours, theirs))
    assert rel_error(got, want) < 1e-12


def test_the_kernel_reads_the_score_where_the_classifier_does() -> None:
    model, tokenizer = load_model_and_tokenizer("tiny:llama", head="score")
    texts = ["What is 2 + 3? 5", "Hi", "A longer row of several words here"]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")  # right-padded
    attention = encoded["attention_mask"]
    rows = HostRows(encoded["input_ids"], attention, attention)
    kernel = LogprobKernel(model, Placement.resolve("cpu", "fp32"))
    out = kernel(rows, torch.arange(len(texts)), grad=False)
    ours = out.logprobs.sum(-1)
    with torch.no_grad():
        theirs = model(**encoded).logits.squeeze(-1)
    assert torch.allclose(ours, theirs, atol=1e-6), (ours, theirs)
    assert (out.logprobs != 0).sum() == len(texts)  # one score per row, at its last token


@pytest.mark.parametrize("route", ["rows", "block-mask"])
def test_packed_scores_and_gradients_equal_the_padded_ones(route: str) -> None:
    """Packed (padding-free) rows give each row's score at its last token, as padded rows do,
    with the same gradient (float64): one row at a time through the kernel (the CPU's route),
    and one call with transformers' block-diagonal mask (the GPU's and FSDP2's)."""
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer("tiny:llama", head="score")
    model.double()
    texts = ["What is 2 + 3? 5", "Hi there", "A longer row of several words here", "7"]
    tokenizer.padding_side = "right"  # as the collators write training rows
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    attention = encoded["attention_mask"]
    scored = attention.clone()
    scored[:-1, :1] = 0  # a prompt column (no row ends there); "7" is one token, scored
    rows = HostRows(encoded["input_ids"], attention, scored)
    order = torch.tensor([2, 0, 3, 1])
    weights = torch.randn(len(texts), dtype=torch.float64)

    def scores_and_grads(packing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        kernel = LogprobKernel(model, Placement.resolve("cpu", "fp32"), packing=packing)
        if route == "block-mask" and packing:
            taken = (rows.input_ids[order], rows.attention[order], rows.scored[order])
            packed = pack(*taken, first_scored=True)
            values = packed_sequence_scores(
                model, packed.input_ids, packed.position_ids, packed.scored
            )
            logprobs = unpack(values, packed, packed.max_length)
        else:
            assert kernel.pack_mode == ("rows" if packing else None)
            logprobs = kernel(rows, order).logprobs
        (logprobs.sum(-1) * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logprobs.detach(), grads

    (padded, padded_grads), (packed, packed_grads) = scores_and_grads(False), scores_and_grads(True)
    assert padded.shape == packed.shape and (packed != 0).sum(-1).eq(1).all()
    torch.testing.assert_close(packed, padded, rtol=1e-12, atol=1e-12)
    assert padded_grads.keys() == packed_grads.keys() and "score.weight" in padded_grads
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)


def test_a_packed_reward_model_run_trains_as_a_padded_one(tmp_path: Path) -> None:
    data = datasets(tmp_path)["preference"]
    losses = []
    for packing in (False, True):
        extra = {"train": {"max_steps": 3, "packing": packing, "max_tokens_per_micro_batch": 60}}
        (tmp_path / str(packing)).mkdir()
        config = config_file(tmp_path / str(packing), data, "reward_model", **extra)
        losses.append([h["loss"] for h in Trainer(load_config(config)).train().history])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and len(losses[0]) == 3


def test_a_trained_reward_model_ranks_its_pairs_and_serves_as_a_reward(tmp_path: Path) -> None:
    data = datasets(tmp_path)["preference"]
    config = config_file(
        tmp_path,
        data,
        "reward_model",
        train={"max_steps": 10},
        optim={"lr": 1e-3, "warmup_ratio": 0.0, "schedule": "constant"},
    )
    result = Trainer(load_config(config)).train()
    history = result.history
    assert history[0]["reward_model/margin"] < 0.1
    assert history[-1]["reward_model/accuracy"] == 1.0 and history[-1]["loss"] < 0.5
    # final/ is a transformers sequence classifier: the rewards module scores with it directly
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    final = result.output_dir / "final"
    model = AutoModelForSequenceClassification.from_pretrained(final)
    scorer = RewardModelScorer(model, AutoTokenizer.from_pretrained(final))
    prompts = [p["prompt"] for p in PAIRS]
    chosen = scorer(prompts, [p["chosen"] for p in PAIRS])
    rejected = scorer(prompts, [p["rejected"] for p in PAIRS])
    assert all(c > r for c, r in zip(chosen, rejected, strict=True)), (chosen, rejected)
    assert "pipeline_tag: text-classification" in (final / "README.md").read_text()


def test_a_resumed_reward_model_run_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    data = datasets(tmp_path)["preference"]
    runs = {name: tmp_path / name for name in ("straight", "resumed")}
    for folder in runs.values():
        folder.mkdir()

    def run(name: str, steps: int, resume: bool) -> list[float]:
        extra = {
            "train": {"max_steps": steps, "batch_size": 2, "micro_batch_size": 1},
            "data": {"path": str(data), "shuffle": True},
            "checkpoint": {"every": 2, "resume": resume},
        }
        config = config_file(runs[name], data, "reward_model", **extra)
        return [h["loss"] for h in Trainer(load_config(config)).train().history]

    straight = run("straight", 6, False)
    run("resumed", 4, False)  # checkpoints at steps 2 and 4: score head and optimizer state
    # Extending the finished run continues from its last step's checkpoint.
    assert run("resumed", 6, True) == pytest.approx(straight[4:], rel=1e-6)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"eval": {"benchmarks": ["gsm8k"]}}, "remove the eval: section"),
    ],
)
def test_what_a_reward_model_cannot_do_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: dict, expected: str
) -> None:
    data = datasets(tmp_path)["preference"]
    config = config_file(tmp_path, data, "reward_model", **extra)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alignlib: error:") and len(err.splitlines()) == 1, err
    assert expected in err and "trains a reward model" in err


def test_a_margin_column_reaches_every_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rows' `margin` column is each pair's m: a column of one value c trains exactly as the
    preset's constant margin c, a varying one trains the same over any micro-batching, and a
    missing or non-numeric value is refused in one line."""
    from test_trainer import write_jsonl

    def losses(rows: list[dict[str, Any]], name: str, *overrides: str) -> list[float]:
        data = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        folder = tmp_path / name
        folder.mkdir()
        config = config_file(folder, data, "reward_model", train={"max_steps": 3})
        return [h["loss"] for h in Trainer(load_config(config, list(overrides))).train().history]

    constant = losses(PAIRS, "constant", "algorithm.params.margin=1.5")
    column = losses([{**p, "margin": 1.5} for p in PAIRS], "column")
    assert column == pytest.approx(constant, rel=1e-6)
    varying = [{**p, "margin": float(i)} for i, p in enumerate(PAIRS)]
    whole = losses(varying, "whole", "train.micro_batch_size=4")
    split = losses(varying, "split", "train.micro_batch_size=1")
    assert split == pytest.approx(whole, rel=1e-5)
    assert whole[0] != pytest.approx(constant[0], rel=1e-3)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**PAIRS[0], "margin": "high"}, *PAIRS[1:]])
    (tmp_path / "bad").mkdir()
    capsys.readouterr()  # the runs' own output
    assert main(["train", str(config_file(tmp_path / "bad", bad, "reward_model"))]) == 2
    err = capsys.readouterr().err
    assert "row 1: field 'margin' must be a finite number on every row" in err, err
    assert len(err.strip().splitlines()) == 1, err
