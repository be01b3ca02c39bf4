"""Math evaluation sets shipped with alignlib (sources and licences: ``benchmarks/README.md``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from alignlib.suggest import did_you_mean

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["BENCHMARKS", "benchmark_file", "load_benchmark"]

BENCHMARKS: Mapping[str, str] = MappingProxyType(
    {
        "math500": "math500.jsonl",
        "gsm8k": "gsm8k.jsonl",
        "aime24": "aime24.jsonl",
        "aime25": "aime25.jsonl",
        "amc23": "amc23.jsonl",
        "minerva_math": "minerva_math.jsonl",
        "olympiadbench": "olympiadbench.jsonl",
    }
)


def benchmark_file(name: str) -> Traversable:
    """The packaged jsonl file of benchmark ``name``; an unknown name's error lists valid ones."""
    if name not in BENCHMARKS:
        raise ValueError(
            f"unknown benchmark {name!r}{did_you_mean(name, BENCHMARKS)}; valid names: "
            f"{', '.join(BENCHMARKS)}; "
            "or pass the path of a .jsonl file"
        )
    return resources.files("alignlib.eval").joinpath("benchmarks", BENCHMARKS[name])


def _resolve(name_or_path: str | os.PathLike[str]) -> Traversable | Path:
    if isinstance(name_or_path, str) and name_or_path in BENCHMARKS:
        return benchmark_file(name_or_path)
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    if isinstance(name_or_path, os.PathLike) or os.sep in text or "/" in text or path.suffix:
        raise FileNotFoundError(f"benchmark file {text!r} does not exist")
    return benchmark_file(text)  # not a path: report it as an unknown name


def _as_answer(value: object) -> str | None:
    if isinstance(value, str):
        return value
    # A few sources store answers as JSON numbers (27.0); whole floats lose the ".0".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def load_benchmark(
    name_or_path: str | os.PathLike[str],
    *,
    problem_field: str = "problem",
    answer_field: str = "answer",
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of a packaged benchmark (by name, see ``BENCHMARKS``) or of any jsonl file.

    Every row keeps all its fields; ``"problem"`` and ``"answer"`` are set to the values of
    ``problem_field`` and ``answer_field``, so callers can always read those two keys. Numeric
    answers become strings. ``limit`` keeps only the first ``limit`` rows.

    Raises:
        ValueError: unknown name, or a bad row (the message names file, line and field).
        FileNotFoundError: a path that does not exist.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"load_benchmark: limit must be None or an int >= 0, got {limit!r}")
    source = _resolve(name_or_path)
    rows: list[dict[str, Any]] = []
    with source.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            where = f"{source}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg}); one object per line") from e
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for field, arg in ((problem_field, "problem_field"), (answer_field, "answer_field")):
                if field not in row:
                    flag = "--" + arg.replace("_", "-")
                    raise ValueError(
                        f"{where}: row has no field {field!r} (fields: {', '.join(row)}); name "
                        f"the right one with eval.{arg} in the YAML or {flag} on the command line"
                    )
            problem, answer = row[problem_field], _as_answer(row[answer_field])
            if not isinstance(problem, str) or answer is None:
                bad = problem_field if not isinstance(problem, str) else answer_field
                raise ValueError(f"{where}: field {bad!r} is {row[bad]!r}, expected a string")
            if not answer.strip():
                raise ValueError(
                    f"{where}: field {answer_field!r} is {row[answer_field]!r}, expected a "
                    "non-empty reference answer; fill it in or drop the row"
                )
            rows.append({**row, "problem": problem, "answer": answer})
    return rows
