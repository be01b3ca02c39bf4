"""Data mistakes users make, each refused in one line naming the file, row or line and the fix
(and the good file next to it still accepted): an algorithm given rows of the wrong format, JSON
values whose type a mixed column would have changed, a malformed line, a bad message role, columns
named otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from alignlib import algorithms
from alignlib.cli import main
from alignlib.data import DataError, infer_format, load_rows
from alignlib.data.fit import check_fit
from alignlib.data.formats import check_rows

PAIRS = [
    {"prompt": f"What is {a} + {b}?", "chosen": f"{a + b}", "rejected": f"{a + b + 1} or so"}
    for a, b in [(2, 3), (4, 4), (7, 1), (6, 3)]
]
SFT = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS]
TPO = [{**p, "reference": f"It is {p['chosen']}."} for p in PAIRS]
KTO = [
    {"prompt": p["prompt"], "completion": p[key], "label": key == "chosen"}
    for p in PAIRS
    for key in ("chosen", "rejected")
]
MESSAGES = [
    {"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": "5"}]}
    for p in PAIRS
]

pytestmark = pytest.mark.usefixtures("one_thread")


def jsonl(path: Path, rows: list[Any]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def train(tmp: Path, rows: list[Any], capsys: pytest.CaptureFixture, **sections: Any) -> str:
    """`alignlib train` on ``rows`` (tiny:llama, one step); its one `alignlib: error:` line."""
    cfg: dict[str, Any] = {
        "output_dir": str(tmp / "run"),
        "model": {"name_or_path": "tiny:llama"},
        "data": {"path": jsonl(tmp / "data.jsonl", rows)},
        "algorithm": {"name": "dpo"},
        "train": {"batch_size": 2, "micro_batch_size": 2, "max_steps": 1},
        "logging": {"progress": False, "tensorboard": False, "plot": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
    code = main(["train", str(tmp / "run.yaml")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("alignlib: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert not (tmp / "run" / "final").exists()
    return errors[0]


# fmt: off
WRONG_FORMAT = [
    pytest.param(PAIRS, {"algorithm": {"name": "sft"}}, "algorithm sft: data {path} has preference rows {{prompt, chosen, rejected}}; SFT trains on {{prompt, completion}} rows", id="sft-on-pairs"),  # noqa: E501
    pytest.param(TPO, {"algorithm": {"name": "sft"}}, "algorithm sft: data {path} has tpo rows", id="sft-on-tpo-rows"),  # noqa: E501
    pytest.param(SFT, {}, "algorithm dpo needs preference rows {{prompt, chosen, rejected}}; {path} has sft rows {{prompt, completion}}", id="dpo-on-sft-rows"),  # noqa: E501
    pytest.param(MESSAGES, {"algorithm": {"name": "ipo"}}, "algorithm ipo needs preference rows {{prompt, chosen, rejected}}; {path} has sft rows {{messages}}", id="ipo-on-messages"),  # noqa: E501
    pytest.param(PAIRS, {"algorithm": {"name": "tpo"}, "train": {"reference": "none"}}, "algorithm tpo needs tpo rows {{prompt, reference, chosen, rejected}}; {path} has preference rows {{prompt, chosen, rejected}}, without 'reference'", id="tpo-without-reference"),  # noqa: E501
    pytest.param(PAIRS, {"algorithm": {"name": "kto"}}, "algorithm kto needs kto rows {{prompt, completion, label}}; {path} has preference rows {{prompt, chosen, rejected}}, without 'completion', 'label' (its 'kto' term would select no row and train nothing); unpair the data: each pair gives {{prompt, completion: chosen, label: true}}", id="kto-on-pairs"),  # noqa: E501
    pytest.param(KTO, {}, "algorithm dpo compares the two completions of a pair; {path} has kto rows {{prompt, completion, label}}, each completion alone (unpaired); use algorithm kto", id="dpo-on-unpaired-rows"),  # noqa: E501
    pytest.param(KTO, {"algorithm": {"name": "sft"}}, "algorithm sft: data {path} has kto rows {{prompt, completion, label}}; SFT trains on {{prompt, completion}} rows", id="sft-on-unpaired-rows"),  # noqa: E501
    pytest.param([{**KTO[0], "label": "true"}, *KTO[1:]], {"algorithm": {"name": "kto"}}, "{path} row 1: field 'label' must be true or false (a JSON boolean)", id="kto-label-string"),  # noqa: E501
]
# fmt: on


@pytest.mark.parametrize(("rows", "sections", "expected"), WRONG_FORMAT)
def test_an_algorithm_given_the_wrong_format_is_refused_before_the_model_loads(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    rows: list[Any],
    sections: dict[str, Any],
    expected: str,
) -> None:
    line = train(tmp_path, rows, capsys, **sections)
    assert expected.format(path=tmp_path / "data.jsonl") in line, line


@pytest.mark.parametrize(
    ("name", "rows", "fmt"),
    [
        ("sft", SFT, "sft"),
        ("sft", MESSAGES, "sft"),
        ("dpo", PAIRS, "preference"),
        ("dpo", TPO, "tpo"),
        ("rpo", PAIRS, "preference"),
        ("tpo", TPO, "tpo"),
        ("tpo_l", TPO, "tpo"),
        ("kto", KTO, "kto"),
        ("simpo", PAIRS, "preference"),
        ("cpo", PAIRS, "preference"),
        ("orpo", PAIRS, "preference"),
        ("apo_zero", PAIRS, "preference"),
        ("discopop", PAIRS, "preference"),
        ("bvpo", [{**p, "trace": True} for p in PAIRS], "bvpo"),
    ],
)
def test_each_algorithm_accepts_its_own_format(name: str, rows: list[Any], fmt: str) -> None:
    assert infer_format(rows[0]) == fmt
    check_rows(rows, fmt, "data.jsonl")
    check_fit(algorithms.get(name).terms, fmt, rows[0], "data.jsonl", name)


def test_values_keep_their_json_type_so_the_bad_row_is_named(tmp_path: Path) -> None:
    """`datasets` types a mixed column as Json and re-parses its strings ("false" -> False,
    "5" -> 5): the string trace passed and the wrong row was blamed."""
    trace = [{**PAIRS[0], "trace": True}] + [{**p, "trace": "false"} for p in PAIRS[1:]]
    rows = load_rows(jsonl(tmp_path / "trace.jsonl", trace))
    assert rows[0]["trace"] is True and rows[1]["trace"] == "false"
    with pytest.raises(DataError, match=r"trace\.jsonl row 2: field 'trace' must be true or false"):
        check_rows(rows, "bvpo", str(tmp_path / "trace.jsonl"))
    listed = [PAIRS[0], {**PAIRS[1], "chosen": ["8"]}, *PAIRS[2:]]
    rows = load_rows(jsonl(tmp_path / "list.jsonl", listed))
    assert rows[0]["chosen"] == "5"
    with pytest.raises(DataError, match=r"list\.jsonl row 2: field 'chosen' must be a string"):
        check_rows(rows, "preference", str(tmp_path / "list.jsonl"))
    mixed = [{**SFT[0], "completion": [{"role": "assistant", "content": "5"}]}, *SFT[1:]]
    rows = load_rows(jsonl(tmp_path / "mixed.jsonl", mixed))
    assert rows == mixed  # strings next to message lists: documented as valid, loaded as given
    check_rows(rows, "sft", "mixed.jsonl")


def test_a_missing_field_is_absent_not_null(tmp_path: Path) -> None:
    rows = load_rows(jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b"}]))
    assert rows[1] == {"prompt": "b"}


@pytest.mark.parametrize(
    ("rows", "expected"),
    [  # only the row's own fields listed; an answer under one other name: the key to set
        (
            [{"prompt": "What is 2 + 3?", "answer": "5"}, {"prompt": "Hi", "solution": "5"}],
            "row 2: reward 'math' needs field 'answer', which this row lacks or leaves null (the "
            "row has prompt, solution)",
        ),
        (
            [{"prompt": "What is 2 + 3?", "target": "5"}, {"prompt": "Hi", "target": "2"}],
            "row 1: reward 'math' needs field 'answer', which this row lacks or leaves null (the "
            "row has prompt, target); data.answer_field: target reads it from 'target'",
        ),
    ],
)
def test_online_row_without_answer_lists_its_fields_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture, rows: list[dict], expected: str
) -> None:
    line = train(
        tmp_path,
        rows,
        capsys,
        algorithm={"name": "grpo"},
        rollout={"n": 2, "max_new_tokens": 4},
        online={"prompts_per_step": 2, "micro_batch_size": 4, "rewards": [{"name": "math"}]},
    )
    assert f"data.jsonl {expected}" in line


def test_a_malformed_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    good = jsonl(tmp_path / "good.jsonl", PAIRS)
    lines = Path(good).read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], lines[1], lines[2][:50], lines[3]]) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl line 3: not valid JSON \(Unterminated"):
        load_rows(str(bad))
    bad.write_text(f"{lines[0]}\n[1, 2]\n")
    with pytest.raises(DataError, match=r"bad\.jsonl line 2: expected a JSON object"):
        load_rows(str(bad))
    assert load_rows(good) == PAIRS
    assert load_rows(good, limit=2) == PAIRS[:2]


def test_json_files_as_an_array_columns_or_lines(tmp_path: Path) -> None:
    array = tmp_path / "array.json"
    array.write_text(json.dumps(PAIRS, indent=2))
    columns = tmp_path / "columns.json"
    columns.write_text(json.dumps({k: [p[k] for p in PAIRS] for k in PAIRS[0]}, indent=2))
    lines = jsonl(tmp_path / "lines.json", PAIRS)
    for path in (str(array), str(columns), lines):
        assert load_rows(path) == PAIRS, path
    array.write_text(json.dumps(PAIRS, indent=2)[:-30])
    with pytest.raises(DataError, match=r"array\.json line \d+: not valid JSON"):
        load_rows(str(array))


def test_a_bad_message_role_is_named_with_the_valid_ones() -> None:
    bad = [{"messages": [{"role": "usr", "content": "Hi"}, {"role": "assistant", "content": "5"}]}]
    with pytest.raises(
        DataError,
        match=r"d\.jsonl row 1: field 'messages' message 1 has role 'usr'; valid roles are "
        r"system, user, assistant, tool",
    ):
        check_rows(bad, "sft", "d.jsonl")
    prompt = [{**SFT[0], "prompt": [{"role": "human", "content": "Hi"}]}]
    with pytest.raises(DataError, match=r"row 1: field 'prompt' message 1 has role 'human'"):
        check_rows(prompt, "sft", "d.jsonl")
    system = [{"role": "system", "content": "Be brief."}, *MESSAGES[0]["messages"]]
    check_rows([{"messages": system}], "sft", "d.jsonl")


def test_unknown_fields_name_the_file_and_the_rename() -> None:
    row = {"question": "What is 2 + 3?", "chosen": "5", "rejected": "6"}
    with pytest.raises(DataError) as caught:
        infer_format(row, "/x/renamed.jsonl")
    message = str(caught.value)
    assert message.startswith("/x/renamed.jsonl: cannot infer the data format")
    assert "(data.prompt_field: question reads the prompt from it, format preference)" in message
    assert "data.format" in message and "preference {prompt, chosen, rejected}" in message
    assert infer_format({**row, "prompt": row["question"]}, "/x/renamed.jsonl") == "preference"


def test_a_misspelled_field_is_named_with_its_fix(tmp_path: Path) -> None:
    from alignlib.data import DataError
    from alignlib.data.formats import check_rows

    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "choosen": "a"}]
    with pytest.raises(DataError) as caught:
        check_rows(rows, "preference", "pairs.jsonl")
    assert str(caught.value) == (
        "pairs.jsonl row 2: field 'chosen' is missing or empty (the row has 'choosen': rename it "
        "to 'chosen'?) (format 'preference' needs prompt, chosen, rejected)"
    )
