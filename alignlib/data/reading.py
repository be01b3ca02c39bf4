"""Local JSON data files read with the standard library, so every value keeps its own JSON type.

``datasets`` types a column whose rows mix types (a string here, a list there) as Json and
re-parses the strings: the string "false" becomes False and "5" becomes 5, so type checks pass on
the wrong rows or blame the wrong ones. A malformed line surfaces from it as an 81-line traceback
ending in DatasetGenerationError. Here a bad line is one DataError naming the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alignlib.data.errors import DataError

ONE_OBJECT = "each line must be one complete JSON object {field: value, ...}"


def read_json_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` file (one object per line; blank lines skipped) or a ``.json`` file
    (the same, a JSON array of objects, or one object, columns of equal-length lists included)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8"
        ) from None
    if text.lstrip().startswith("["):
        return _array(text, path)
    try:
        return _lines(text, path)
    except DataError:
        whole = _whole_object(text) if path.suffix == ".json" else None
        if whole is None:
            raise
        return whole


def _lines(text: str, path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    # split("\n"), not splitlines(): a JSON string may hold U+2028, which splitlines() breaks on.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path} line {number}: not valid JSON ({_where(exc)}); {ONE_OBJECT}"
            ) from None
        rows.append(_object(value, f"{path} line {number}"))
    return rows


def _array(text: str, path: Path) -> list[dict[str, Any]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path} line {exc.lineno}: not valid JSON ({_where(exc)}); the "
            "file must be one JSON array of objects, or one JSON object per line"
        ) from None
    return [_object(item, f"{path} item {i} of the array") for i, item in enumerate(value, 1)]


def _where(exc: json.JSONDecodeError) -> str:
    """ "Expecting ',' delimiter at column 12" (json's own text ends some messages with "at")."""
    return f"{exc.msg.removesuffix(' at')} at column {exc.colno}"


def _whole_object(text: str) -> list[dict[str, Any]] | None:
    """A ``.json`` file holding one (pretty-printed) object: its columns as rows when every value
    is a list of the same length (as ``datasets`` reads it), else the object as one row."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    columns = list(value.values())
    if columns and all(isinstance(c, list) for c in columns) and len(set(map(len, columns))) == 1:
        return [dict(zip(value, cells, strict=True)) for cells in zip(*columns, strict=True)]
    return [value]


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(
            f"{where}: expected a JSON object {{field: value, ...}} (one row), got "
            f"{type(value).__name__} {json.dumps(value)[:40]}"
        )
    return value
