"""Held-out rows of offline runs (`data.heldout`): split off the end of the data (and then not
trained on) or read from their own file, scored by the run's own loss and metrics before
training, every N steps and at the end, and every misuse one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_trainer import config_file, write_jsonl

from alignlib.cli import main
from alignlib.config import load_config
from alignlib.trainer.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [
    {
        "prompt": f"What is {a} + {b}?",
        "chosen": f"\\boxed{{{a + b}}}",
        "rejected": f"\\boxed{{{a + b + 1}}}",
    }
    for a in range(4)
    for b in range(4)
]


def logged(run: Path) -> dict[int, dict[str, float]]:
    """step -> the held-out metrics logged at it."""
    out: dict[int, dict[str, float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        held = {k: v for k, v in row.items() if k.startswith("heldout/")}
        if held:
            out[int(row["step"])] = held
    return out


def test_dpo_scores_its_heldout_rows_and_never_trains_on_them(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    heldout = {"size": 4, "every": 3}
    train = {"max_steps": 6, "batch_size": 4, "micro_batch_size": 2}
    config = config_file(
        tmp_path, data, "dpo", data={"path": str(data), "heldout": heldout}, train=train
    )
    trainer = Trainer(load_config(config))
    source = trainer.source()
    assert len(source.examples) == len(PAIRS) - 4  # the last 4 rows are held out
    assert [e.index for e in source.heldout] == list(range(len(PAIRS) - 4, len(PAIRS)))
    result = trainer.train()
    held = logged(result.output_dir)
    assert sorted(held) == [0, 3, 6]  # before training, every 3 steps, at the end
    # before any update π = π_ref: every margin is 0 and the DPO loss is log 2 exactly
    assert held[0]["heldout/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert held[0]["heldout/dpo/margin"] == pytest.approx(0.0, abs=1e-6)
    assert held[6]["heldout/dpo/margin"] != pytest.approx(0.0, abs=1e-6)


def test_sft_heldout_loss_falls_on_rows_from_their_own_file(tmp_path: Path) -> None:
    rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS]
    data = write_jsonl(tmp_path / "train.jsonl", rows[:12])
    held_file = write_jsonl(tmp_path / "heldout.jsonl", rows[12:])
    heldout = {"path": str(held_file), "size": None, "every": None}
    config = config_file(
        tmp_path, data, "sft", data={"path": str(data), "heldout": heldout}, train={"max_steps": 8}
    )
    held = logged(Trainer(load_config(config)).train().output_dir)
    assert sorted(held) == [0, 8]  # every: null scores before and after only
    assert held[8]["heldout/loss"] < held[0]["heldout/loss"] - 0.5


@pytest.mark.parametrize(
    ("heldout", "expected"),
    [
        ({"size": 16}, "holds out every one of the 16 rows"),
        ({"path": "SFT", "size": 2}, "its rows are format 'sft', the training rows 'preference'"),
    ],
)
def test_bad_heldout_rows_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], heldout: dict, expected: str
) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    sft = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS]
    if heldout.get("path") == "SFT":
        heldout["path"] = str(write_jsonl(tmp_path / "sft.jsonl", sft))
    config = config_file(tmp_path, data, "dpo", data={"path": str(data), "heldout": heldout})
    capsys.readouterr()
    assert main(["train", str(config)]) == 2
    errors = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("alignlib: error:")
    ]
    assert len(errors) == 1 and expected in errors[0], errors
