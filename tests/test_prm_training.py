"""Training a process reward model on `stepwise` rows (TRL's stepwise supervision) with `sft`:
the loss is the mean over labelled steps of −log p(label token | text through the step's tag)
(checked against the model's own logits here, padded and packed), the positions are the ones
the tagged scorer reads (a trained PRM tells right steps from wrong ones on held-out rows), and
misuse is one line."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlib.cli import main
from alignlib.config import load_config
from alignlib.rewards import TaggedProcessRewardScorer
from alignlib.testing import build_tiny_model, build_tokenizer
from alignlib.trainer.logprobs import token_logprobs
from alignlib.trainer.packing import pack, packed_token_logprobs, unpack

pytestmark = pytest.mark.usefixtures("one_thread")


def stepwise_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """Sums whose label is whether the stated result is even: learnable from the step's last
    digit, so a PRM that reads the right position learns it quickly."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        steps, labels = [], []
        for _ in range(rng.randint(1, 3)):
            c = rng.randint(2, 18)
            steps.append(f"{rng.randint(1, 9)} + {rng.randint(1, 9)} = {c}")
            labels.append(c % 2 == 0)
        rows.append({"prompt": "Check each sum.", "completions": steps, "labels": labels})
    return rows


def write_run(tmp: Path, rows: list[dict[str, Any]], **train: Any) -> Path:
    data = tmp / "steps.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "output_dir": str(tmp / "run"),
        "model": {"name_or_path": "tiny:llama", "device": "cpu", "precision": "fp32"},
        "data": {"path": str(data), "format": "stepwise", "shuffle": False},
        "algorithm": {"name": "sft"},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "schedule": "constant"},
        "train": {"batch_size": 16, "micro_batch_size": 16, "max_steps": 1, "seed": 0, **train},
        "logging": {"progress": False, "tensorboard": False, "plot": False},
    }
    path = tmp / "prm.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def label_nll(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> float:
    """Mean over every labelled step of −log softmax(logits at its tag)[label token], from one
    forward of the whole Math-Shepherd text (f"{prompt} {step} ки\\n{step} ки")."""
    good, bad = (tokenizer.encode(t, add_special_tokens=False)[0] for t in ("+", "-"))
    tag = tokenizer.encode("ки", add_special_tokens=False)[-1]
    losses = []
    for row in rows:
        text = f"{row['prompt']} " + "\n".join(f"{s} ки" for s in row["completions"])
        ids = torch.tensor([tokenizer.encode(text)])
        with torch.no_grad():
            logps = model(input_ids=ids).logits[0].double().log_softmax(-1)
        at_tags = logps[ids[0] == tag]
        for step_logps, label in zip(at_tags, row["labels"], strict=True):
            losses.append(-float(step_logps[good if label else bad]))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("packing", [False, True])
def test_the_loss_is_the_label_tokens_nll_at_each_tag(tmp_path: Path, packing: bool) -> None:
    from alignlib.trainer.loop import Trainer

    rows = stepwise_rows(16, seed=3)
    path = write_run(tmp_path, rows, packing=packing)
    config = load_config(path, ["optim.lr=1e-12"])  # final/: the model the loss was taken of
    result = Trainer(config).train()
    final = tmp_path / "run" / "final"
    model = AutoModelForCausalLM.from_pretrained(final, torch_dtype=torch.float64)
    want = label_nll(model, AutoTokenizer.from_pretrained(final), rows)
    assert result.history[0]["loss"] == pytest.approx(want, rel=1e-5)


def test_a_trained_prm_scores_held_out_steps(tmp_path: Path) -> None:
    from alignlib.trainer.loop import Trainer

    path = write_run(tmp_path, stepwise_rows(400, seed=0), max_steps=150)
    Trainer(load_config(path)).train()
    final = tmp_path / "run" / "final"
    scorer = TaggedProcessRewardScorer(
        AutoModelForCausalLM.from_pretrained(final), AutoTokenizer.from_pretrained(final)
    )
    held = stepwise_rows(60, seed=1)
    scores = scorer([r["prompt"] for r in held], ["\n".join(r["completions"]) for r in held])
    pairs = [
        (s, v)
        for r, ss in zip(held, scores, strict=True)
        for s, v in zip(ss, r["labels"], strict=True)
    ]
    accuracy = sum((s > 0.5) == label for s, label in pairs) / len(pairs)
    assert accuracy > 0.9, accuracy


def test_targets_are_scored_instead_of_the_input_tokens() -> None:
    """token_logprobs(targets=...) reads log p(target_t | x_<t), padded and packed alike."""
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, init_std=0.2).double()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, len(tokenizer), (3, 9), generator=gen)
    attention = torch.ones_like(ids)
    attention[2, 6:] = 0
    targets = torch.randint(5, len(tokenizer), (3, 9), generator=gen)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=attention).logits.log_softmax(-1)
        got, _ = token_logprobs(model, ids, attention, targets=targets)
        scored = attention.clone()
        scored[:, 0] = 0
        packed = pack(ids, attention, scored, targets=targets)
        flat, _ = packed_token_logprobs(
            model, packed.input_ids, packed.position_ids, packed.scored, targets=packed.targets
        )
    expected = want[:, :-1].gather(-1, targets[:, 1:, None])[..., 0]
    real = attention[:, 1:].bool()
    torch.testing.assert_close(got[:, 1:][real], expected[real])
    torch.testing.assert_close(unpack(flat, packed, 9)[:, 1:][real], expected[real])
    plain, _ = token_logprobs(model, ids, attention)
    assert not torch.allclose(plain[:, 1:][real], expected[real])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"algorithm": {"name": "dpo"}}, "stepwise"),
        ({"rows": "mismatch"}, "2 steps but 1 labels"),
        ({"data": {"stepwise": {"good_token": "good"}}}, "data.stepwise.good_token: 'good'"),
    ],
)
def test_stepwise_misuse_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict, expected: str
) -> None:
    rows = stepwise_rows(8, seed=0)
    if change.pop("rows", None):
        rows[3] = {"prompt": "p", "completions": ["1 + 1 = 2", "2 + 2 = 5"], "labels": [True]}
    path = write_run(tmp_path, rows)
    config = yaml.safe_load(path.read_text())
    for key, value in change.items():
        config[key] = {**config[key], **value}
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and expected in err[0], err
