"""Preference rows whose prompt is implicit: `chosen` and `rejected` are each the whole
conversation (or text), both beginning with the same prompt, as in TRL's standard preference
data sets (trl-lib/ultrafeedback_binarized, Anthropic/hh-rlhf). The prompt is their longest
common beginning: whole messages for conversations, characters for texts, where a space just
before the split goes to the completions (what TRL's ``extract_prompt`` returns, so the same
data trains the same rows in both).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignlib.data.errors import DataError


def shared_start(chosen: Sequence[Any], rejected: Sequence[Any]) -> int:
    """Length of the longest common beginning of two message lists or texts; for texts, one
    less when the last shared character is a space (it starts the completions)."""
    length = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        length += 1
    shorter = min(len(chosen), len(rejected))
    if isinstance(chosen, str) and 0 < length < shorter and chosen[length - 1] == " ":
        length -= 1
    return length


def explicit_prompt(row: dict[str, Any], where: str) -> dict[str, Any]:
    """``row`` with the shared beginning of chosen and rejected as its prompt."""
    chosen, rejected = row["chosen"], row["rejected"]
    if type(chosen) is not type(rejected) or not isinstance(chosen, (str, list)):
        raise DataError(
            f"{where}: has no 'prompt', and chosen and rejected are not both texts or both "
            "message lists, so the prompt cannot be read from them; add a 'prompt' field"
        )
    length = shared_start(chosen, rejected)
    if length == 0:
        raise DataError(
            f"{where}: has no 'prompt', and chosen and rejected begin differently, so no shared "
            "prompt can be read from them; add a 'prompt' field"
        )
    if length in (len(chosen), len(rejected)):
        which = "chosen" if length == len(chosen) else "rejected"
        raise DataError(
            f"{where}: has no 'prompt', and all of {which} is the beginning of the other, which "
            f"leaves {which} no completion after the shared prompt; fix the row or add 'prompt'"
        )
    return {
        **row,
        "prompt": chosen[:length],
        "chosen": chosen[length:],
        "rejected": rejected[length:],
    }


def prompt_is_implicit(row: dict[str, Any]) -> bool:
    """`chosen` and `rejected` and no other text: no `prompt`, and no field that might be one
    under another name (`question`: renaming it is the fix, not reading a prompt off the
    answers). Numbers such as TRL's `score_chosen` may sit beside them."""
    others = [v for k, v in row.items() if k not in ("chosen", "rejected")]
    texts = any(isinstance(v, (str, list)) for v in others)
    return {"chosen", "rejected"} <= set(row) and "prompt" not in row and not texts


def with_explicit_prompts(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """Rows with `chosen` and `rejected` but no `prompt` (or other text) get the prompt they
    share; others are returned as they are."""
    if not rows or not prompt_is_implicit(rows[0]):
        return rows
    return [
        explicit_prompt(row, f"{source} row {i}") if "prompt" not in row else row
        for i, row in enumerate(rows, start=1)
    ]
