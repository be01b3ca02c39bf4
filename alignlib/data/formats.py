"""Row formats and loading through `datasets`, with errors that name the file and row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "tpo": ("prompt", "reference", "chosen", "rejected"),
    "bvpo": ("prompt", "chosen", "rejected", "trace"),
    "prompts": ("prompt", "answer"),
}


class DataError(ValueError):
    """Data that cannot be used as given (the message names the file, row and field)."""


def infer_format(row: dict[str, Any]) -> str:
    """Guess the format from a row's fields (most specific first)."""
    keys = set(row)
    if "messages" in keys:
        return "sft"
    for name in ("tpo", "bvpo", "preference", "sft", "prompts"):
        if set(FORMAT_FIELDS[name]) <= keys:
            return name
    raise DataError(
        f"cannot infer the data format from fields {sorted(keys)}; expected one of "
        + "; ".join(f"{k}: {{{', '.join(v)}}}" for k, v in FORMAT_FIELDS.items())
        + " (or sft {messages})"
    )


def check_rows(rows: list[dict[str, Any]], fmt: str, source: str) -> None:
    """Every row must have the format's fields, non-empty."""
    required = (
        ("messages",) if fmt == "sft" and rows and "messages" in rows[0] else FORMAT_FIELDS[fmt]
    )
    for index, row in enumerate(rows, start=1):
        for field in required:
            value = row.get(field)
            if value is None or (isinstance(value, (str, list)) and len(value) == 0):
                raise DataError(
                    f"{source} row {index}: field '{field}' is missing or empty "
                    f"(format '{fmt}' needs {', '.join(required)})"
                )


def load_rows(path: str, split: str = "train", limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a local jsonl/json/parquet file, a ``builtin:NAME`` set, or a hub data set."""
    if path.startswith("builtin:"):
        from alignlib.data.builtin import build

        rows = build(path.removeprefix("builtin:"))
        return rows[:limit] if limit else rows
    import datasets

    suffix = Path(path).suffix
    try:
        if suffix in {".jsonl", ".json"}:
            data = datasets.load_dataset("json", data_files=path, split="train")
        elif suffix == ".parquet":
            data = datasets.load_dataset("parquet", data_files=path, split="train")
        else:
            data = datasets.load_dataset(path, split=split)
    except FileNotFoundError:
        raise DataError(f"data file {path} does not exist") from None
    except (ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"could not read {path}: {first}") from None
    if limit:
        data = data.select(range(min(limit, len(data))))
    return [dict(row) for row in data]
