"""What an online run samples, as RUN/completions.jsonl (``logging.completions``): every sample
of the first k prompts of each step, with its rewards, length and whether the length cap cut it
(what TRL's ``log_completions`` shows and verl's ``rollout_data_dir`` dumps), to read what the
policy writes as it trains. The file is the record; :class:`CompletionFeed` reads it as it grows
so the trackers show each step's samples as a table beside its metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the feed side (logs.py) needs no rollout code
    from alignlib.trainer.online_rollout import Rollouts

FILE = "completions.jsonl"
"""The log's name in the run folder."""


class CompletionLog:
    """Appends each step's records to ``path``; a resumed run first drops the records of the
    steps it will sample again (and a line an interrupted write left half-written), so every
    step is there once."""

    def __init__(self, path: Path, prompts: int, start: int) -> None:
        self.path, self.prompts = path, prompts
        if start == 0:
            path.unlink(missing_ok=True)
        elif path.is_file():
            lines = path.read_text().splitlines()
            steps = [step_of(line) for line in lines]
            kept = [
                line for line, s in zip(lines, steps, strict=True) if s is not None and s <= start
            ]
            path.write_text("".join(f"{line}\n" for line in kept))

    def write(self, step: int, rollouts: Rollouts, round_index: int = 0) -> None:
        """The samples of the first ``prompts`` prompts of ``rollouts`` (sampled for ``step``
        in dynamic sampling's round ``round_index``)."""
        records = [
            {"step": step, "round": round_index} | completion_record(rollouts, p, s)
            for p in range(min(self.prompts, len(rollouts.rows)))
            for s in range(len(rollouts.generations[p]))
        ]
        with self.path.open("a") as out:
            out.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)


def step_of(line: str) -> int | None:
    """A record's step, or None for a line a killed run left half-written."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def completion_record(rollouts: Rollouts, p: int, s: int) -> dict[str, Any]:
    """Sample ``s`` of prompt ``p``: the prompt (as the data row gives it) and its answer, the
    completion's text, its total reward and each reward's own value (before its weight)."""
    row, generation = rollouts.rows[p], rollouts.generations[p][s]
    return {
        "prompt_index": p,
        "sample": s,
        "prompt": row.get("prompt"),
        "answer": row.get("answer"),
        "completion": generation.text,
        "reward": float(rollouts.rewards[p, s]),
        "rewards": {label: float(values[p, s]) for label, values in rollouts.parts.items()},
        "correct": bool(rollouts.correct[p, s]),
        "tokens": len(generation.token_ids),
        "truncated": generation.finish_reason == "length",
    }


class CompletionFeed:
    """Each step's records of RUN/completions.jsonl as the run appends them (a background
    generator may have written later steps already: they wait for their step)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.pending: dict[int, list[dict[str, Any]]] = {}

    def take(self, step: int) -> list[dict[str, Any]]:
        """The records of ``step``, as table rows (earlier steps' unclaimed records dropped)."""
        if self.path.is_file():
            with self.path.open("rb") as file:
                file.seek(self.offset)
                data = file.read()
            whole = data.rfind(b"\n") + 1  # a line being written waits for the next call
            self.offset += whole
            for line in data[:whole].decode("utf-8").splitlines():
                if step_of(line) is not None:
                    record = json.loads(line)
                    self.pending.setdefault(int(record["step"]), []).append(record)
        for earlier in [s for s in self.pending if s < step]:
            del self.pending[earlier]
        return [table_row(r) for r in self.pending.pop(step, [])]


def table_row(record: dict[str, Any]) -> dict[str, Any]:
    """A record flattened for a tracker's table: text columns as text, each reward its own
    column (``reward/<label>``)."""
    row = {k: v for k, v in record.items() if k != "rewards"}
    for key in ("prompt", "answer"):
        if not isinstance(row.get(key), str | None):
            row[key] = json.dumps(row[key], ensure_ascii=False, default=str)
    return row | {f"reward/{k}": v for k, v in record.get("rewards", {}).items()}
