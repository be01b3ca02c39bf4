"""Issue 14 column names online: the gold answer column is `data.answer_field` (TRL's
`solution`), a demonstration column of bare answers is refused with one line, and
conversational prompts (message lists) train online."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_online import make_config

import alignlib.trainer.online_collect as online_collect
from alignlib.cli import main
from alignlib.config import load_config
from alignlib.data.collate import prompt_ids
from alignlib.trainer.loop import Trainer
from alignlib.trainer.preflight_online import bare_answer

TRL_ROWS = [{"prompt": f"What is {a} + {b}?", "solution": str(a + b)} for a, b in [(2, 3), (4, 4)]]


pytestmark = pytest.mark.usefixtures("one_thread")


def with_rows(config: Path, rows: list[dict[str, Any]], **changes: Any) -> Path:
    """The config of ``make_config`` on other data rows, with sections updated."""
    cfg = yaml.safe_load(config.read_text())
    data = config.parent / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg["data"]["path"] = str(data)
    for key, values in changes.items():
        cfg[key] = {**cfg.get(key, {}), **values}
    config.write_text(yaml.safe_dump(cfg))
    return config


def refused(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    ("demonstration", "answer", "why"),
    [
        ("5", "5", "equals its answer"),
        ("$\\boxed{5}$.", "5", "equals its answer"),
        ("x + 1", "x+1", "equals its answer"),
        ("\\boxed{12}", None, "is a bare number"),
        ("-1,234.5", None, "is a bare number"),
        ("2 + 3 = 5. The answer is \\boxed{5}.", "5", None),
        ("It is 5", "5", None),
        ("\\boxed{x+1}", None, None),  # not a number, no answer to compare: not judged bare
    ],
)
def test_the_bare_answer_rule(demonstration: str, answer: str | None, why: str | None) -> None:
    assert bare_answer(demonstration, answer) == why


def test_answer_field_names_the_gold_answer_column(tmp_path: Path) -> None:
    config = with_rows(
        make_config(tmp_path),
        TRL_ROWS,
        data={"answer_field": "solution"},
        online={"rewards": [{"name": "math"}], "prompts_per_step": 2},
        train={"max_steps": 1},
    )
    trainer = Trainer(load_config(config))
    source = trainer.source()
    assert [r["answer"] for r in source.collector.rows] == ["5", "8"]  # graded against `solution`
    assert [r["solution"] for r in source.collector.rows] == ["5", "8"]  # the column keeps its name
    result = trainer.train()
    assert 0 <= result.history[-1]["rollout/accuracy"] <= 1


def test_a_missing_answer_field_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = with_rows(make_config(tmp_path), TRL_ROWS, data={"answer_field": "gold"})
    line = refused(config, capsys)
    assert "rows.jsonl row 1: data.answer_field 'gold' is missing or null" in line


@pytest.mark.parametrize(
    ("rows", "changes", "message"),
    [
        (  # TRL's `solution` is the gold answer: HPT would train its SFT rows on "5"
            [{**r, "answer": r["solution"]} for r in TRL_ROWS],
            {},
            "online.demonstration_field 'solution' holds bare answers, not worked solutions "
            "(every row's 'solution' equals its answer, e.g. row 1: '5')",
        ),
        (
            [{"prompt": r["prompt"], "solution": f"\\boxed{{{r['solution']}}}"} for r in TRL_ROWS],
            {"online": {"rewards": [{"name": "online_rewards:has_digit"}]}},
            "every row's 'solution' is a bare number",
        ),
        (
            TRL_ROWS,
            {"data": {"answer_field": "solution"}},
            "online.demonstration_field and data.answer_field are both 'solution'",
        ),
    ],
    ids=["equals-answer", "bare-number", "same-column"],
)
def test_bare_answer_demonstrations_are_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rows: list[dict[str, Any]],
    changes: dict[str, Any],
    message: str,
) -> None:
    algorithm = {"algorithm": {"name": "hpt", "params": {"max_response_length": 6}}}
    config = with_rows(make_config(tmp_path), rows, **algorithm, **changes)
    assert message in refused(config, capsys)


def test_conversational_prompts_train_online(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages = [
        {"role": "system", "content": "Answer with digits."},
        {"role": "user", "content": "What is 2 + 3?"},
    ]
    rows = [{"prompt": messages, "solution": "2 + 3 = \\boxed{5}"}] * 4
    config = with_rows(
        make_config(tmp_path), rows, algorithm={"name": "hpt", "params": {"max_response_length": 6}}
    )
    seen: list[list[int]] = []
    sample = online_collect.RolloutCollector.sample

    def spy(self: Any, engine: Any, prompts: list[list[int]], *args: Any) -> Any:
        seen.extend(prompts)
        return sample(self, engine, prompts, *args)

    monkeypatch.setattr(online_collect.RolloutCollector, "sample", spy)
    trainer = Trainer(load_config(config))
    result = trainer.train()
    want = prompt_ids(trainer.tokenizer, messages, chat=True)
    assert seen and all(ids == want for ids in seen)  # the whole conversation, templated
    assert len(result.history) == 2
