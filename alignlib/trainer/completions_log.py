"""What an online run samples, as RUN/completions.jsonl (``logging.completions``): every sample
of the first k prompts of each step, with its rewards, length and whether the length cap cut it
(what TRL's ``log_completions`` shows and verl's ``rollout_data_dir`` dumps), to read what the
policy writes as it trains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
