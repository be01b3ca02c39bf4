"""Preference rows with an implicit prompt (TRL's standard preference data: chosen and rejected
are whole conversations or texts sharing their beginning) train as their explicit form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_trainer import PAIRS, config_file, write_jsonl

from alignlib.config import load_config
from alignlib.data import DataError, infer_format, load_rows
from alignlib.data.implicit_prompt import explicit_prompt
from alignlib.trainer.loop import Trainer


def conversation(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


IMPLICIT = [
    {
        "chosen": conversation(p["prompt"], p["chosen"]),
        "rejected": conversation(p["prompt"], p["rejected"]),
    }
    for p in PAIRS
]
EXPLICIT = [
    {
        "prompt": [{"role": "user", "content": p["prompt"]}],
        "chosen": [{"role": "assistant", "content": p["chosen"]}],
        "rejected": [{"role": "assistant", "content": p["rejected"]}],
    }
    for p in PAIRS
]
TEXTS = [
    {
        "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4",
        "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5",
    },
    {"chosen": "Q: hi A: yes sir", "rejected": "Q: hi A: yellow"},  # a split inside a word
    {"chosen": "Say: a b", "rejected": "Say: a c"},  # a space before the split
]


def test_the_prompt_is_the_shared_beginning(tmp_path: Path) -> None:
    rows = load_rows(str(write_jsonl(tmp_path / "implicit.jsonl", IMPLICIT)))
    assert rows == EXPLICIT
    assert infer_format(rows[0]) == "preference"


def test_the_same_rows_as_trl_extract_prompt() -> None:
    data_utils = pytest.importorskip("trl.data_utils")
    for row in [*IMPLICIT, *TEXTS]:
        assert explicit_prompt(row, "row") == data_utils.extract_prompt(row)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"chosen": "Yes.", "rejected": "No."}, "begin differently"),
        ({"chosen": "Q: x A:", "rejected": "Q: x A: yes"}, "all of chosen is the beginning"),
        ({"chosen": "Q: yes", "rejected": conversation("Q", "no")}, "not both texts"),
    ],
)
def test_a_row_without_a_shared_prompt_is_named(tmp_path: Path, row: dict, message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [TEXTS[0], row])
    with pytest.raises(DataError) as caught:
        load_rows(str(path))
    text = str(caught.value)
    assert "bad.jsonl row 2" in text and message in text and "'prompt'" in text
    assert "\n" not in text


def test_a_prompt_under_another_name_is_not_read_off_the_answers(tmp_path: Path) -> None:
    """`question` beside chosen/rejected is a prompt under another name, not an implicit one:
    the rows stay as they are (the format error names data.prompt_field), and with
    data.prompt_field it is the prompt."""
    rows = [{"question": "2 + 3?", "chosen": "\\boxed{5}", "rejected": "\\boxed{6}"}]
    path = str(write_jsonl(tmp_path / "renamed.jsonl", rows))
    assert load_rows(path) == rows
    with pytest.raises(DataError, match=r"data\.prompt_field: question reads the prompt from it"):
        infer_format(rows[0], path)
    assert load_rows(path, prompt_field="question") == [{**rows[0], "prompt": "2 + 3?"}]
    scored = [{"chosen": "Q: a", "rejected": "Q: b", "score_chosen": 8.0, "score_rejected": 2.0}]
    assert load_rows(str(write_jsonl(tmp_path / "scored.jsonl", scored)))[0]["prompt"] == "Q:"


def test_implicit_rows_train_as_their_explicit_form(tmp_path: Path) -> None:
    losses = []
    for name, rows in [("implicit", IMPLICIT), ("explicit", EXPLICIT)]:
        folder = tmp_path / name
        folder.mkdir()
        data = write_jsonl(folder / "pairs.jsonl", rows)
        result = Trainer(load_config(config_file(folder, data, "dpo"))).train()
        losses.append([h["loss"] for h in result.history])
        logged = (folder / "run-dpo" / "metrics.jsonl").read_text().splitlines()
        assert json.loads(logged[-1])["step"] == 5
    assert losses[0] == losses[1]
    assert losses[0][-1] < losses[0][0]
