"""Tokenize rows into examples (one or more sequences with completion masks) and collate them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from alignlib.data.errors import DataError
from alignlib.device import HOST
from alignlib.estimator import Role

# Which fields of a row become sequences, and their roles.
SEQUENCE_FIELDS: dict[str, list[tuple[str, Role]]] = {
    "sft": [("completion", Role.DEMO)],
    "preference": [("chosen", Role.CHOSEN), ("rejected", Role.REJECTED)],
    "bvpo": [("chosen", Role.CHOSEN), ("rejected", Role.REJECTED)],
    "tpo": [("chosen", Role.CHOSEN), ("rejected", Role.REJECTED), ("reference", Role.DEMO)],
    "kto": [("completion", Role.CHOSEN), ("kl_completion", Role.KL)],
}
"""Each format's trained sequences and their roles. A kto row's completion is CHOSEN when its
label is true (desirable) and REJECTED when false; its KL row is another row's completion."""


def roles_of(fmt: str) -> frozenset[Role]:
    """The roles of the sequences rows of format ``fmt`` give (a kto completion is chosen or
    rejected by its label: ``encode_example``)."""
    if fmt == "stepwise":  # one sequence per row, trained as a demonstration (SFT)
        return frozenset({Role.DEMO})
    roles = frozenset(role for _, role in SEQUENCE_FIELDS.get(fmt, []))
    return roles | {Role.REJECTED} if fmt == "kto" else roles


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
    cut_prompt: bool = False
    """The prompt was longer than ``max_prompt_length`` (its start was cut)."""
    cut_completions: int = 0
    """How many completions were longer than ``max_completion_length`` (their middle cut)."""
    margin: float | None = None
    """The pair's target margin (a preference row's `margin` column), or None."""
    scored: list[list[int]] | None = None
    """Each sequence's scored positions when they are not its whole completion (a stepwise
    row: the position after each step's tag), or None."""
    targets: list[list[int]] | None = None
    """Each sequence's target token at every position when it is not the input token (a
    stepwise row: the label token after each tag), or None."""


def _text(value: Any) -> str:
    """A completion given as a string or as conversational messages (assistant turns)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(m["content"] for m in value if m.get("role", "assistant") == "assistant")
    raise DataError(f"expected a string or a list of messages, got {type(value).__name__}")


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: Any, chat: bool, tools: list[Any] | None = None
) -> list[int]:
    """Token ids of a prompt (a string or a list of messages), through the chat template
    (``tools``: callables or JSON schemas for the template's tool list)."""
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            messages, tools=tools or None, add_generation_prompt=True, tokenize=False
        )
    else:
        text = "\n".join(m["content"] for m in messages) + "\n"
    return tokenizer.encode(text, add_special_tokens=False)


GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")
"""Marks the assistant's tokens in templates that support ``return_assistant_tokens_mask``."""


def _messages(value: Any, role: str) -> list[dict[str, Any]]:
    """A prompt or completion as chat messages (a bare string is one `role` message)."""
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every special token id: the named ones and added tokens marked special (``<|eot_id|>``,
    ``<end_of_turn>``, ``<|im_end|>`` ...)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}


def _end_turn(
    tokenizer: PreTrainedTokenizerBase, completion: list[int], whole: bool = False
) -> list[int]:
    """The completion through its last special token (the end-of-turn: what generation stops
    at); what a template writes after it (ChatML's newline) is never generated and, attention
    being causal, changes no trained log-prob. A template that ends turns with no special token
    gets EOS appended, as the model must learn to stop. ``whole`` keeps the turn as the
    template writes it: a reward model reads its score at the last token, and a scorer (TRL's,
    alignlib's ``RewardModelScorer``) renders whole conversations."""
    special = _special_ids(tokenizer)
    last = max((i for i, t in enumerate(completion) if t in special), default=None)
    if last is None:
        return [*completion, tokenizer.eos_token_id]
    return completion if whole else completion[: last + 1]


def _generation_masked(
    tokenizer: PreTrainedTokenizerBase, prompt: list[dict[str, Any]], turn: list[dict[str, Any]]
) -> tuple[list[int], int] | None:
    """(the rendered ids, the turn's first token) from the template's own ``{% generation %}``
    marks (``return_assistant_tokens_mask``); None without them."""
    if not GENERATION_TAG.search(tokenizer.chat_template or ""):
        return None
    prompt_ids = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    out = tokenizer.apply_chat_template(
        prompt + turn, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if list(prompt_ids) != ids[: len(prompt_ids)]:
        return None  # not prefix-preserving: fall back to the rendered suffix
    start = next((i for i in range(len(prompt_ids), len(ids)) if mask[i]), None)
    return None if start is None else (ids, start)


def _rendered(
    tokenizer: PreTrainedTokenizerBase,
    prompt: list[dict[str, Any]],
    turns: list[list[dict]],
    whole: bool = False,
) -> tuple[list[int], list[list[int]]]:
    """Prompt ids and each turn's completion ids, rendered whole through the chat template:
    trl's ``apply_chat_template`` renders prompt-with-generation-prompt and prompt + turn and
    takes the suffix (the prompt is the common prefix, as trl does for DeepSeek-R1's template);
    the prompt is tokenized alone, as at inference, and the turn ends at its end-of-turn."""
    from trl.data_utils import apply_chat_template

    texts = [apply_chat_template({"prompt": prompt, "completion": t}, tokenizer) for t in turns]
    fulls = [r["prompt"] + r["completion"] for r in texts]
    common = os.path.commonprefix([r["prompt"] for r in texts])  # noqa: RUF071 (by character)
    prompt_ids = tokenizer.encode(common, add_special_tokens=False)
    completions = [tokenizer.encode(f[len(common) :], add_special_tokens=False) for f in fulls]
    return prompt_ids, [_end_turn(tokenizer, c, whole) for c in completions]


def _chat_sequences(
    tokenizer: PreTrainedTokenizerBase, prompt: Any, completions: list[Any], whole: bool = False
) -> tuple[list[int], list[list[int]]]:
    """Prompt ids and completion ids (through the end-of-turn token, or the whole turn) of each
    completion."""
    messages = _messages(prompt, "user")
    turns = [_messages(c, "assistant") for c in completions]
    masked = [_generation_masked(tokenizer, messages, t) for t in turns]
    found = [m for m in masked if m is not None]
    if len(found) == len(turns) and len({start for _, start in found}) == 1:
        start = found[0][1]
        ends = [_end_turn(tokenizer, ids[start:], whole) for ids, _ in found]
        return found[0][0][:start], ends
    return _rendered(tokenizer, messages, turns, whole)


def _plain_sequences(
    tokenizer: PreTrainedTokenizerBase, prompt: Any, completions: list[Any]
) -> tuple[list[int], list[list[int]]]:
    """Without a chat template: the prompt's lines, then each completion's text + EOS."""
    ids = prompt_ids(tokenizer, prompt, chat=False)
    encoded = [tokenizer.encode(_text(c), add_special_tokens=False) for c in completions]
    return ids, [[*c, tokenizer.eos_token_id] for c in encoded]


def encode_example(
    tokenizer: PreTrainedTokenizerBase,
    row: dict[str, Any],
    fmt: str,
    *,
    index: int,
    chat: bool = True,
    max_prompt_length: int = 256,
    max_completion_length: int = 256,
    whole_turns: bool = False,
) -> Example:
    """Tokenize one row. With a chat template, prompt + completion are rendered whole, so the
    trained tokens are what the model sees at inference (the template's own end-of-turn token,
    ``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, not necessarily EOS); without one, the
    completion gets EOS. The prompt keeps its end; a long completion keeps its start and its
    last (end-of-turn) token. ``whole_turns`` keeps what the template writes after the
    end-of-turn token (a reward model's rows, rendered as its scorer renders them)."""
    if fmt == "sft" and "messages" in row:
        messages = row["messages"]
        row = {"prompt": messages[:-1], "completion": [messages[-1]]}
    if fmt not in SEQUENCE_FIELDS:
        raise DataError(f"format {fmt!r} has no completions to train on offline")
    fields = SEQUENCE_FIELDS[fmt]
    if fmt == "kto":
        main = ("completion", Role.CHOSEN if row["label"] else Role.REJECTED)
        fields = [main, *fields[1:]] if "kl_completion" in row else [main]  # no KL rows asked
    values = [row[field] for field, _ in fields]
    if chat and getattr(tokenizer, "chat_template", None):
        prompt, completions = _chat_sequences(tokenizer, row["prompt"], values, whole_turns)
    else:
        prompt, completions = _plain_sequences(tokenizer, row["prompt"], values)
    cut_prompt = len(prompt) > max_prompt_length
    prompt = prompt[-max_prompt_length:]
    sequences, starts, roles = [], [], []
    cut_completions = sum(len(c) > max_completion_length for c in completions)
    for completion, (_, role) in zip(completions, fields, strict=True):
        if len(completion) > max_completion_length:
            completion = [*completion[: max_completion_length - 1], completion[-1]]
        sequences.append(prompt + completion)
        starts.append(len(prompt))
        roles.append(role)
    trace = bool(row["trace"]) if fmt == "bvpo" else None
    margin = float(row["margin"]) if row.get("margin") is not None and fmt != "kto" else None
    return Example(index, sequences, starts, roles, trace, cut_prompt, cut_completions, margin)


@dataclass
class Collated:
    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    prompt_mask: Tensor
    """[R, W] 1 on prompt tokens after the first (a token with a predecessor can be scored)."""
    roles: Tensor
    pair_ids: Tensor
    trace: Tensor | None
    margins: Tensor | None
    """[R] the margin of each row's pair, when the examples have one."""
    example_of_row: Tensor
    """[R] position of each row's example in the list given to ``collate``."""
    num_tokens: int
    targets: Tensor | None = None
    """[R, W] the token each position is scored against, when an example gives its own."""


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
    prompt = torch.zeros(len(rows), width, device=HOST)
    for r, (_, seq, start, _) in enumerate(rows):
        input_ids[r, : len(seq)] = torch.tensor(seq, device=HOST)
        attention[r, : len(seq)] = 1
        completion[r, start : len(seq)] = 1
        prompt[r, 1:start] = 1
    targets = _explicit(examples, rows, input_ids, completion)
    example_of_row = torch.tensor([i for i, _, _, _ in rows], device=HOST)
    has_trace = any(ex.trace is not None for ex in examples)
    has_margin = any(ex.margin is not None for ex in examples)
    return Collated(
        input_ids=input_ids,
        attention_mask=attention,
        completion_mask=completion,
        prompt_mask=prompt,
        roles=torch.tensor([int(role) for _, _, _, role in rows], device=HOST),
        pair_ids=example_of_row.clone(),
        trace=(
            torch.tensor([bool(examples[i].trace) for i, _, _, _ in rows], device=HOST)
            if has_trace
            else None
        ),
        margins=(
            torch.tensor([examples[i].margin or 0.0 for i, _, _, _ in rows], device=HOST)
            if has_margin
            else None
        ),
        example_of_row=example_of_row,
        num_tokens=int(attention.sum()),
        targets=targets,
    )


def _explicit(
    examples: list[Example], rows: list[tuple[int, Any, int, Any]], ids: Tensor, scored: Tensor
) -> Tensor | None:
    """[R, W] targets when an example gives its own, else None; an example's own scored
    positions replace its completion mask in ``scored`` (in place)."""
    if not any(ex.targets is not None or ex.scored is not None for ex in examples):
        return None
    targets = ids.clone()
    seen: dict[int, int] = {}
    for r, (i, _, _, _) in enumerate(rows):
        k = seen[i] = seen.get(i, -1) + 1  # the k-th sequence of example i
        ex = examples[i]
        if ex.scored is not None:
            scored[r] = 0
            scored[r, ex.scored[k]] = 1
        if ex.targets is not None:
            targets[r, : len(ex.targets[k])] = torch.tensor(ex.targets[k], device=HOST)
    return targets
