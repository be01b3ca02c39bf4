"""Row formats, their checks, and loading (local JSON files by the standard library, parquet and
hub sets through `datasets`), with errors that name the file and row."""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from alignlib.data.builtin import build
from alignlib.data.errors import DataError
from alignlib.data.implicit_prompt import with_explicit_prompts
from alignlib.data.reading import read_json_rows
from alignlib.suggest import did_you_mean

FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "tpo": ("prompt", "reference", "chosen", "rejected"),
    "bvpo": ("prompt", "chosen", "rejected", "trace"),
    "prompts": ("prompt", "answer"),
    "kto": ("prompt", "completion", "label"),
    "stepwise": ("prompt", "completions", "labels"),
}


def infer_format(row: dict[str, Any], source: str | None = None) -> str:
    """Guess the format from a row's fields (most specific first); ``source`` names the file in
    the error."""
    keys = set(row)
    if "messages" in keys:
        return "sft"
    for name in ("tpo", "bvpo", "preference", "kto", "stepwise", "sft", "prompts"):
        if set(FORMAT_FIELDS[name]) <= keys:
            return name
    raise DataError(
        f"{source or 'the data'}: cannot infer the data format from the fields of row 1 "
        f"{sorted(keys)}{_rename_hint(keys)}; rename the columns to one format's fields: "
        + "; ".join(f"{k} {{{', '.join(v)}}}" for k, v in FORMAT_FIELDS.items()).replace(
            "completion}", "completion} or {messages}", 1
        )
        + " (data.format names a format, it does not rename columns)"
    )


def _rename_hint(keys: set[str]) -> str:
    """ " (rename 'question' to 'prompt' for format preference?)" when renaming the one field no
    format knows gives a format; "" otherwise."""
    unknown = sorted(keys - {f for fields in FORMAT_FIELDS.values() for f in fields})
    for name in ("tpo", "bvpo", "preference", "kto", "sft", "prompts"):
        missing = [f for f in FORMAT_FIELDS[name] if f not in keys]
        if len(missing) == 1 and len(unknown) == 1:
            if missing[0] == "prompt":
                return f" (data.prompt_field: {unknown[0]} reads the prompt from it, format {name})"
            return f" (rename '{unknown[0]}' to '{missing[0]}' for format {name}?)"
    return ""


TEXT_FIELDS = ("prompt", "completion", "chosen", "rejected", "reference")
"""Fields that must hold text: a string, or a list of chat messages {role, content}."""

CHAT_ROLES = ("system", "user", "assistant", "tool", "developer", "ipython", "function")
"""Message roles chat templates render (the last three: OpenAI's developer, Llama 3.1's tool
output, older function calls); any other fails inside the template after the model loads
("Invalid role in the last message: usr")."""


def _text_problem(value: Any) -> str | None:
    """Why ``value`` is not text (a string or a list of messages), or None when it is."""
    if isinstance(value, str):
        return None
    if isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in value
    ):
        return None
    if isinstance(value, list):
        return "a list whose items are not all chat messages {role, content: string}"
    return f"{type(value).__name__} {value!r:.40}"


def check_roles(messages: list[dict[str, Any]], where: str, field: str) -> None:
    """Every message that names a role names one of CHAT_ROLES."""
    for number, message in enumerate(messages, start=1):
        role = message.get("role", "assistant")
        if role not in CHAT_ROLES:
            raise DataError(
                f"{where}: field '{field}' message {number} has role {role!r:.40}; valid roles "
                f"are {', '.join(CHAT_ROLES)} (rename the role)"
            )


def check_value_types(row: dict[str, Any], where: str, fields: tuple[str, ...]) -> None:
    """Text fields must be text and `trace` a JSON boolean: a number as prompt fails deep
    inside the tokenizer, and the string "false" would read as True."""
    for field in fields:
        value = row.get(field)
        if value is None:
            continue
        if field in TEXT_FIELDS:
            problem = _text_problem(value)
            if problem is not None:
                raise DataError(
                    f"{where}: field '{field}' must be a string (or a list of chat messages), "
                    f"got {problem}"
                )
            if isinstance(value, list):
                check_roles(value, where, field)
        if field in ("trace", "label") and not isinstance(value, bool):
            raise DataError(
                f"{where}: field '{field}' must be true or false (a JSON boolean), got "
                f'{type(value).__name__} {value!r:.40}; a string such as "false" would read as '
                "True"
            )


def misspelled(field: str, row: dict[str, Any], required: tuple[str, ...]) -> str:
    """ " (the row has 'choosen': rename it to 'chosen'?)" for a close key the format does not
    read, else ""."""
    close = difflib.get_close_matches(field, [k for k in row if k not in required], n=1)
    return f" (the row has '{close[0]}': rename it to '{field}'?)" if close else ""


def check_rows(rows: list[dict[str, Any]], fmt: str, source: str) -> None:
    """Every row must have the format's fields, non-empty and of the right type."""
    if not rows:
        raise DataError(f"{source} has no rows")
    required = (
        ("messages",) if fmt == "sft" and rows and "messages" in rows[0] else FORMAT_FIELDS[fmt]
    )
    for index, row in enumerate(rows, start=1):
        for field in required:
            value = row.get(field)
            if value is None or (isinstance(value, (str, list)) and len(value) == 0):
                typo = misspelled(field, row, required)
                raise DataError(
                    f"{source} row {index}: field '{field}' is missing or empty{typo} "
                    f"(format '{fmt}' needs {', '.join(required)})"
                )
        if required == ("messages",):
            check_messages(row["messages"], f"{source} row {index}")
        elif fmt == "stepwise":
            check_steps(row, f"{source} row {index}")
        else:
            check_value_types(row, f"{source} row {index}", required)
    if "chosen" in required and any("margin" in row for row in rows):
        check_margins(rows, source)


def check_steps(row: dict[str, Any], where: str) -> None:
    """A stepwise row: a text prompt, a list of step strings and one boolean label per step."""
    steps, labels = row["completions"], row["labels"]
    if _text_problem(row["prompt"]) is not None:
        raise DataError(f"{where}: field 'prompt' must be a string, got {row['prompt']!r:.40}")
    if not isinstance(steps, list) or not all(isinstance(s, str) and s.strip() for s in steps):
        raise DataError(
            f"{where}: field 'completions' must be a list of non-empty step strings, got "
            f"{steps!r:.60}"
        )
    if not isinstance(labels, list) or not all(isinstance(v, bool) for v in labels):
        raise DataError(
            f"{where}: field 'labels' must be a list of true/false (JSON booleans), one per step, "
            f"got {labels!r:.60}"
        )
    if len(labels) != len(steps):
        raise DataError(
            f"{where}: {len(steps)} steps but {len(labels)} labels; give one label per step"
        )


def check_margins(rows: list[dict[str, Any]], source: str) -> None:
    """A `margin` column (a pair's target margin, TRL's RewardTrainer) is a finite number on
    every row: a row without one would silently get 0."""
    for index, row in enumerate(rows, start=1):
        value = row.get("margin")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value):  # type: ignore[arg-type]
            raise DataError(
                f"{source} row {index}: field 'margin' must be a finite number on every row "
                f"when some row has one, got {value!r:.40}"
            )


def check_messages(messages: Any, where: str) -> None:
    """An sft `messages` row: a list of {role, content} ending with the assistant's turn."""
    problem = _text_problem(messages) if isinstance(messages, list) else "not a list"
    if problem is not None:
        raise DataError(f"{where}: field 'messages' must be a list of chat messages ({problem})")
    check_roles(messages, where, "messages")
    if len(messages) < 2 or messages[-1].get("role", "assistant") != "assistant":
        raise DataError(
            f"{where}: field 'messages' must end with an assistant message after at least one "
            "user message (the last message is the completion trained on)"
        )


KL_LOOK_BACK = 64
"""Rows searched back for another prompt's completion (the rows of one prompt sit together in
practice; a longer run of one prompt falls back to the previous row's completion)."""


def with_kl_completions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KTO rows with ``kl_completion``: each prompt paired with the completion of the nearest
    earlier row that has another prompt (the first rows wrap around to the last), the
    mismatched pairs KTO's reference point is estimated on. TRL rotates completions by one
    within each chunk of ``per_device_train_batch_size`` rows, which pairs a prompt with its
    own other completion when the unpaired rows of a preference pair sit side by side."""
    out = []
    for i, row in enumerate(rows):
        earlier = range(1, min(len(rows), KL_LOOK_BACK + 1))
        back = next((k for k in earlier if rows[i - k]["prompt"] != row["prompt"]), 1)
        out.append({**row, "kl_completion": rows[i - back]["completion"]})
    return out


def unpair_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """kto rows from preference rows: each pair gives {prompt, completion: chosen, label: true}
    and {prompt, completion: rejected, label: false} (TRL's ``unpair_preference_dataset``)."""
    return [
        {"prompt": row["prompt"], "completion": row[key], "label": key == "chosen"}
        for row in rows
        for key in ("chosen", "rejected")
    ]


def unpaired(rows: list[dict[str, Any]], fmt: str, source: str) -> tuple[list[dict[str, Any]], str]:
    """``data.unpair``: the preference rows of ``source`` (checked as such first) as kto rows,
    and their format."""
    if not {"chosen", "rejected"} <= set(FORMAT_FIELDS.get(fmt, ())):
        raise DataError(
            f"data.unpair: {source} has {fmt} rows; unpairing needs preference rows "
            "{prompt, chosen, rejected}; remove data.unpair, or give such rows"
        )
    return unpair_rows(rows), "kto"


def with_derived_fields(
    rows: list[dict[str, Any]], fmt: str, kl_rows: bool = True
) -> list[dict[str, Any]]:
    """The rows with the fields their format derives from other rows (kto's KL completions,
    when the algorithm reads ``kl_rows``)."""
    return with_kl_completions(rows) if fmt == "kto" and kl_rows else rows


def identical_pairs(rows: list[dict[str, Any]], fmt: str) -> list[int]:
    """Row numbers (from 1) of preference rows whose chosen equals their rejected: such a pair
    has zero margin forever and gives no preference signal."""
    if fmt not in ("preference", "tpo", "bvpo"):
        return []
    return [i for i, row in enumerate(rows, start=1) if row.get("chosen") == row.get("rejected")]


def load_rows(
    path: str, split: str = "train", limit: int | None = None, prompt_field: str = "prompt"
) -> list[dict[str, Any]]:
    """Rows of a local jsonl/json/parquet file, a ``builtin:NAME`` set, or a hub data set, with
    ``prompt`` read from ``prompt_field`` (``data.prompt_field``); preference rows with an
    implicit prompt get it made explicit (implicit_prompt.py).

    JSON files are read line by line (see reading.py): each value keeps its JSON type and a
    malformed line is named. A file with no rows is refused here, naming it (``datasets`` raises
    a bare StopIteration or "corresponds to no data" for one)."""
    rows = with_prompt_field(_read_rows(path, split, limit), prompt_field, path)
    return with_explicit_prompts(rows, path)


def with_prompt_field(rows: list[dict[str, Any]], field: str, source: str) -> list[dict[str, Any]]:
    """Rows whose ``prompt`` is the ``field`` column (GSM8K and many sets call it `question`);
    the column keeps its name. A row without the column is refused, naming it."""
    if field == "prompt":
        return rows
    for index, row in enumerate(rows, start=1):
        if field not in row:
            raise DataError(
                f"{source} row {index}: data.prompt_field '{field}' is not one of its fields "
                f"({', '.join(sorted(row))}){did_you_mean(field, row)}"
            )
    return [{**row, "prompt": row[field]} for row in rows]


def _read_rows(path: str, split: str, limit: int | None) -> list[dict[str, Any]]:
    if path.startswith("builtin:"):
        rows = build(path.removeprefix("builtin:"))
        return rows[:limit] if limit else rows
    suffix = Path(path).suffix
    if suffix in {".jsonl", ".json"}:
        if not Path(path).is_file():
            raise DataError(f"data file {path} does not exist")
        rows = read_json_rows(Path(path))
        if not rows:
            raise DataError(_empty(path))
        return rows[:limit] if limit else rows
    local = suffix == ".parquet"
    if local and Path(path).is_file() and _blank(Path(path)):
        raise DataError(_empty(path))
    try:
        data = _load_dataset(path, suffix, split)
    except FileNotFoundError:
        raise DataError(f"data file {path} does not exist") from None
    except (ValueError, OSError, StopIteration) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"could not read {path}: {first}") from None
    if len(data) == 0:
        raise DataError(_empty(path))
    if limit:
        data = data.select(range(min(limit, len(data))))
    return [dict(row) for row in data]


def _load_dataset(path: str, suffix: str, split: str) -> Any:
    """``datasets.load_dataset`` for a local parquet file (its progress bars off: they would
    clutter the one-line errors and warnings on stderr) or a hub name."""
    import datasets

    if suffix != ".parquet":
        return datasets.load_dataset(path, split=split)
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset("parquet", data_files=path, split="train")
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _blank(path: Path) -> bool:
    """Empty, or only whitespace (read only when small: a large file is not blank)."""
    size = path.stat().st_size
    return size == 0 or (size < 1 << 16 and not path.read_bytes().strip())


def _empty(path: str) -> str:
    return (
        f"data file {path} is empty (no rows); point data.path at a file with one JSON object "
        "per line"
    )
