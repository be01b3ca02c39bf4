"""Packaged benchmarks and the jsonl loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlib.eval.datasets import BENCHMARKS, load_benchmark
from alignlib.rewards import grade_many

EXPECTED_LINES = {
    "math500": 500,
    "gsm8k": 1319,
    "aime24": 30,
    "aime25": 30,
    "amc23": 40,
    "minerva_math": 272,
    "olympiadbench": 675,
}


def test_registry_names() -> None:
    assert set(BENCHMARKS) == set(EXPECTED_LINES)


@pytest.mark.parametrize("name", sorted(EXPECTED_LINES))
def test_benchmark_loads_with_expected_size(name: str) -> None:
    rows = load_benchmark(name)
    assert len(rows) == EXPECTED_LINES[name]
    for row in rows:
        assert isinstance(row["problem"], str) and row["problem"].strip()
        assert isinstance(row["answer"], str) and row["answer"].strip()


def test_math500_solutions_grade_correct_against_answers() -> None:
    # The reference solutions end in \boxed{answer}: a grader or loader bug shows up here.
    rows = load_benchmark("math500")
    assert all(grade_many([r["solution"] for r in rows], [r["answer"] for r in rows]))


def test_limit_and_field_mapping() -> None:
    rows = load_benchmark("gsm8k", problem_field="question", limit=3)
    assert len(rows) == 3
    assert rows[0]["problem"] == rows[0]["question"]
    assert load_benchmark("aime24", limit=0) == []


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        load_benchmark("math5000")
    message = str(info.value)
    assert "(did you mean 'math500'?)" in message
    assert all(name in message for name in EXPECTED_LINES)


def test_user_jsonl_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    lines = [{"q": "1+1?", "a": 2}, {"q": "2+2?", "a": "4"}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    rows = load_benchmark(str(path), problem_field="q", answer_field="a")
    assert [(r["problem"], r["answer"]) for r in rows] == [("1+1?", "2"), ("2+2?", "4")]
    assert load_benchmark(path, problem_field="q", answer_field="a") == rows  # PathLike too


def test_missing_field_error_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b", "solution": "2"}\n')
    with pytest.raises(ValueError) as info:
        load_benchmark(path)
    message = str(info.value)
    assert f"{path}:2:" in message
    assert "'answer'" in message and "eval.answer_field in the YAML or --answer-field" in message
    assert "\n" not in message


def test_invalid_json_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n{not json\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        load_benchmark(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_benchmark(tmp_path / "nope.jsonl")
