"""`stepwise` rows (TRL's stepwise supervision: {prompt, completions: [step, ...], labels: [bool,
...]}) as a process reward model's training sequence in Math-Shepherd's layout.

The sequence is what a tagged PRM scores (``alignlib.rewards.process_reward.tagged_ids``): the
prompt, then each step followed by the step tag. The position after each tag is scored against
the step's label token (`good_token` for a right step, `bad_token` for a wrong one) while the
input keeps the text, so SFT's token NLL there trains exactly what the PRM is read by: the
model's next-token distribution at each tag."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from alignlib.data.collate import Example
from alignlib.data.errors import DataError
from alignlib.estimator import Role
from alignlib.rewards.process_reward import tagged_ids


def label_ids(tokenizer: PreTrainedTokenizerBase, good: str, bad: str) -> tuple[int, int]:
    """(good, bad) token ids; one line when either is not one token of the vocabulary."""
    ids = []
    for name, token in (("good_token", good), ("bad_token", bad)):
        encoded = tokenizer.encode(token, add_special_tokens=False)
        if len(encoded) != 1:
            raise DataError(
                f"data.stepwise.{name}: {token!r} encodes to {len(encoded)} tokens; the label "
                "tokens must each be one token of the vocabulary"
            )
        ids.append(encoded[0])
    return ids[0], ids[1]


def encode_stepwise(
    tokenizer: PreTrainedTokenizerBase,
    row: dict[str, Any],
    index: int,
    tokens: tuple[str, str, str],
    max_length: int,
) -> Example:
    """One stepwise row as one sequence, its steps' label tokens as targets (``tokens``: the
    step tag, the good and the bad token). A sequence longer than ``max_length`` keeps its
    start and the steps whose label fits (the rest is cut)."""
    tag, good_token, bad_token = tokens
    good, bad = label_ids(tokenizer, good_token, bad_token)
    ids, tags = tagged_ids(tokenizer, row["prompt"], row["completions"], tag)
    ids = [*ids, tokenizer.eos_token_id]  # the last tag's label needs a position after it
    kept = [(p, label) for p, label in zip(tags, row["labels"], strict=True) if p + 1 < max_length]
    if not kept:
        raise DataError(
            f"data row {index + 1}: its first step's tag falls past the "
            f"{max_length} tokens kept (data.max_prompt_length + data.max_completion_length); "
            "raise them or shorten the prompt"
        )
    ids = ids[:max_length]
    targets = list(ids)
    for position, label in kept:
        targets[position + 1] = good if label else bad
    scored = [position + 1 for position, _ in kept]
    return Example(
        index,
        [ids],
        [scored[0]],
        [Role.DEMO],
        cut_completions=int(len(kept) < len(tags)),
        scored=[scored],
        targets=[targets],
    )


def stepwise_examples(
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    tokens: tuple[str, str, str],
    max_length: int,
) -> list[Example]:
    """Every stepwise row as its example (:func:`encode_stepwise`)."""
    return [encode_stepwise(tokenizer, r, i, tokens, max_length) for i, r in enumerate(rows)]
