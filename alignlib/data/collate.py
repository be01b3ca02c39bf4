"""Tokenize rows into examples (one or more sequences with completion masks) and collate them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from alignlib.data.formats import DataError
from alignlib.device import HOST
from alignlib.estimator import Role

# Which fields of a row become sequences, and their roles.
SEQUENCE_FIELDS: dict[str, list[tuple[str, Role]]] = {
    "sft": [("completion", Role.DEMO)],
    "preference": [("chosen", Role.CHOSEN), ("rejected", Role.REJECTED)],
    "bvpo": [("chosen", Role.CHOSEN), ("rejected", Role.REJECTED)],
    "tpo": [("chosen", Role.CHOSEN), ("rejected", Role.REJECTED), ("reference", Role.DEMO)],
}


@dataclass
class Example:
    """One data row, tokenized: its sequences share a prompt and a pair id."""

    index: int
    """Row index in the data set (the key of the reference log-prob cache)."""
    sequences: list[list[int]]
    """Prompt + completion token ids of each sequence."""
    completion_starts: list[int]
    """Position of the first completion token in each sequence."""
    roles: list[Role]
    trace: bool | None = None


def _text(value: Any) -> str:
    """A completion given as a string or as conversational messages (assistant turns)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(m["content"] for m in value if m.get("role", "assistant") == "assistant")
    raise DataError(f"expected a string or a list of messages, got {type(value).__name__}")


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: Any, chat: bool) -> list[int]:
    """Token ids of a prompt (a string or a list of messages), through the chat template."""
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = "\n".join(m["content"] for m in messages) + "\n"
    return tokenizer.encode(text, add_special_tokens=False)


def encode_example(
    tokenizer: PreTrainedTokenizerBase,
    row: dict[str, Any],
    fmt: str,
    *,
    index: int,
    chat: bool = True,
    max_prompt_length: int = 256,
    max_completion_length: int = 256,
) -> Example:
    """Tokenize one row; the prompt keeps its end, each completion its start (+ EOS)."""
    if fmt == "sft" and "messages" in row:
        messages = row["messages"]
        row = {"prompt": messages[:-1], "completion": messages[-1]["content"]}
    if fmt not in SEQUENCE_FIELDS:
        raise DataError(f"format {fmt!r} has no completions to train on offline")
    prompt = prompt_ids(tokenizer, row["prompt"], chat)[-max_prompt_length:]
    sequences, starts, roles = [], [], []
    for field, role in SEQUENCE_FIELDS[fmt]:
        completion = tokenizer.encode(_text(row[field]), add_special_tokens=False)
        completion = [*completion[: max_completion_length - 1], tokenizer.eos_token_id]
        sequences.append(prompt + completion)
        starts.append(len(prompt))
        roles.append(role)
    trace = bool(row["trace"]) if fmt == "bvpo" else None
    return Example(index, sequences, starts, roles, trace)


@dataclass
class Collated:
    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    roles: Tensor
    pair_ids: Tensor
    trace: Tensor | None
    example_of_row: Tensor
    """[R] position of each row's example in the list given to ``collate``."""
    num_tokens: int


def collate(examples: list[Example], pad_id: int) -> Collated:
    """Right-padded rows of all examples, example by example."""
    rows = [
        (i, seq, start, role)
        for i, ex in enumerate(examples)
        for seq, start, role in zip(ex.sequences, ex.completion_starts, ex.roles, strict=True)
    ]
    width = max(len(seq) for _, seq, _, _ in rows)
    # Built on the host (explicitly: the training kernel moves each micro-batch once).
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=HOST)
    attention = torch.zeros(len(rows), width, dtype=torch.long, device=HOST)
    completion = torch.zeros(len(rows), width, device=HOST)
    for r, (_, seq, start, _) in enumerate(rows):
        input_ids[r, : len(seq)] = torch.tensor(seq, device=HOST)
        attention[r, : len(seq)] = 1
        completion[r, start : len(seq)] = 1
    example_of_row = torch.tensor([i for i, _, _, _ in rows], device=HOST)
    has_trace = any(ex.trace is not None for ex in examples)
    return Collated(
        input_ids=input_ids,
        attention_mask=attention,
        completion_mask=completion,
        roles=torch.tensor([int(role) for _, _, _, role in rows], device=HOST),
        pair_ids=example_of_row.clone(),
        trace=(
            torch.tensor([bool(examples[i].trace) for i, _, _, _ in rows], device=HOST)
            if has_trace
            else None
        ),
        example_of_row=example_of_row,
        num_tokens=int(attention.sum()),
    )
