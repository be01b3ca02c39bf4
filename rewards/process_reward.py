"""Score each reasoning step of a completion with a process reward model (PRM).

The layout is the one TRL's ``PRMTrainer`` trains on (stepwise-supervision rows {prompt,
completions: [step, ...], labels: [bool, ...]}), so a PRM trained there scores here unchanged:
``[bos] + prompt + Σ_k (step_k + separator)``, no other special tokens, each step's label on the
last token of its separator. A completion is cut into steps at ``step_separator``; pieces that
are only whitespace are not steps.

torch is imported lazily (only when a scorer is used), so ``import alignlib.rewards`` stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignlib.rewards.reward_model import forward_in_batches, pad_token_id, same_count

__all__ = [
    "ProcessRewardScorer",
    "Step",
    "TaggedProcessRewardScorer",
    "split_steps",
    "tagged_ids",
]


@dataclass(frozen=True)
class Step:
    """One step of a completion: its text and where it ends (a character offset into the
    completion, one past its last character)."""

    text: str
    end: int


def split_steps(completion: str, separator: str) -> list[Step]:
    """The completion's steps in order; an empty (or all-whitespace) completion is one empty
    step at offset 0, so every completion gets a score."""
    if not separator:
        raise ValueError("split_steps: the step separator must be a non-empty string")
    steps, start = [], 0
    for piece in completion.split(separator):
        if piece.strip():
            steps.append(Step(piece, start + len(piece)))
        start += len(piece) + len(separator)
    return steps or [Step("", 0)]


def prompt_text(prompt: str | Sequence[dict[str, Any]]) -> str:
    """A conversational prompt (a message list) as the text of its messages, one per line."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(message.get("content", "")) for message in prompt)


class ProcessRewardScorer:
    """Per-step scores from a transformers ``AutoModelForTokenClassification``.

    A two-label model (TRL's PRM: label 1 = the step is correct) scores a step by the softmax
    probability of label 1 at the step's last separator token; a one-label model gives its raw
    output there (a regression PRM). Rows are right-padded, so a score does not depend on the
    batch it is in.

    Args:
        model: The PRM; put in eval mode here.
        tokenizer: Its tokenizer (its pad token, else eos, pads batches).
        step_separator: Where a completion is cut into steps, and what follows each step in the
            PRM's input (TRL's ``step_separator``, default ``"\\n"``).
        batch_size: Completions per forward pass.
    """

    def __init__(
        self, model: Any, tokenizer: Any, step_separator: str = "\n", batch_size: int = 8
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"ProcessRewardScorer: batch_size must be >= 1, got {batch_size}")
        labels = self.check_model(model)
        if labels not in (1, 2):
            raise ValueError(
                f"ProcessRewardScorer: the model has num_labels={labels}; a PRM has 2 labels "
                "(TRL's PRMTrainer: step wrong / right) or 1 (a regression score)"
            )
        pad_id = pad_token_id(tokenizer, "ProcessRewardScorer")
        self.separator_ids = tokenizer.encode(step_separator, add_special_tokens=False)
        if not self.separator_ids:
            raise ValueError(
                f"ProcessRewardScorer: step_separator {step_separator!r} encodes to no tokens"
            )
        self.model, self.tokenizer, self.pad_id = model.eval(), tokenizer, int(pad_id)
        self.step_separator, self.batch_size, self.two_labels = (
            step_separator,
            batch_size,
            labels == 2,
        )

    @staticmethod
    def check_model(model: Any) -> int:
        """The model's label count (a subclass checks its own kind of model)."""
        return int(getattr(model.config, "num_labels", 2))

    def encode(
        self, prompt: str | Sequence[dict[str, Any]], steps: Sequence[Step]
    ) -> tuple[list[int], list[int]]:
        """(input ids, the position of each step's score) in TRL's PRM layout."""
        ids = self.tokenizer(prompt_text(prompt), add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        ids = ([bos] if bos is not None else []) + list(ids)
        positions = []
        for step in steps:
            ids += self.tokenizer(step.text, add_special_tokens=False)["input_ids"]
            ids += self.separator_ids
            positions.append(len(ids) - 1)
        return ids, positions

    def steps(self, completion: str) -> list[Step]:
        return split_steps(completion, self.step_separator)

    def read(self, logits: Any) -> Any:
        """[B, T] the score each position would give a step ending there."""
        return logits.softmax(-1)[..., 1] if self.two_labels else logits[..., 0]

    def __call__(
        self, prompts: Sequence[str | Sequence[dict[str, Any]]], completions: Sequence[str]
    ) -> list[list[float]]:
        """For each (prompt, completion), the score of each of its steps, in order."""
        same_count(type(self).__name__, prompts, completions)
        encoded = [self.encode(p, self.steps(c)) for p, c in zip(prompts, completions, strict=True)]
        sequences = [ids for ids, _ in encoded]
        scores: list[list[float]] = [[] for _ in encoded]
        for idx, logits in forward_in_batches(self.model, sequences, self.batch_size, self.pad_id):
            values = self.read(logits)
            for row, i in enumerate(idx):
                scores[i] = values[row, encoded[i][1]].tolist()
        return scores


class TaggedProcessRewardScorer(ProcessRewardScorer):
    """Per-step scores from a causal LM that rates a step tag with two tokens: Math-Shepherd's
    PRMs and OpenRLHF's ``train_prm`` (placeholder ``ки``, reward tokens ``+`` / ``-``).

    The input is ``[bos] prompt + " " + step₁ + " " + tag + "\n" + step₂ + " " + tag …``
    (Math-Shepherd's ``f"{question} {output}"`` with each step ending in the tag), and a
    step's score is softmax(logit(good), logit(bad))[good] at its tag's last token.

    Args:
        step_tag: The tag that closes each step.
        good_token, bad_token: Tokens (each one token of the vocabulary) whose logits rate it.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        step_separator: str = "\n",
        batch_size: int = 8,
        step_tag: str = "ки",
        good_token: str = "+",
        bad_token: str = "-",
    ) -> None:
        super().__init__(model, tokenizer, step_separator, batch_size)
        if not step_tag:
            raise ValueError("TaggedProcessRewardScorer: step_tag must be a non-empty string")
        self.step_tag = step_tag
        self.candidates = [self.token_id(tokenizer, t) for t in (good_token, bad_token)]

    @staticmethod
    def check_model(model: Any) -> int:
        return 2  # a causal LM: two of its vocabulary's logits rate a step

    @staticmethod
    def token_id(tokenizer: Any, token: str) -> int:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"TaggedProcessRewardScorer: {token!r} encodes to {len(ids)} tokens; the good "
                "and bad tokens must each be one token of the PRM's vocabulary"
            )
        return int(ids[0])

    def encode(
        self, prompt: str | Sequence[dict[str, Any]], steps: Sequence[Step]
    ) -> tuple[list[int], list[int]]:
        """(input ids, the position of each step's tag's last token)."""
        return tagged_ids(self.tokenizer, prompt, [s.text for s in steps], self.step_tag)

    def read(self, logits: Any) -> Any:
        return logits[..., self.candidates].softmax(-1)[..., 0]


def tagged_ids(
    tokenizer: Any, prompt: str | Sequence[dict[str, Any]], steps: Sequence[str], tag: str
) -> tuple[list[int], list[int]]:
    """(input ids, the position of each step's tag's last token) of Math-Shepherd's layout,
    ``f"{question} {step₁} {tag}\n{step₂} {tag}…"``, the whole text tokenized at once with the
    tokenizer's own special tokens as their example does: what a tagged PRM scores and what
    alignlib trains one on (format `stepwise`)."""
    text, ends = prompt_text(prompt) + " ", []
    for k, step in enumerate(steps):
        text += ("\n" if k else "") + f"{step} {tag}"
        ends.append(len(text))
    encoded = tokenizer(text, return_offsets_mapping=True)
    spans = encoded["offset_mapping"]
    # A step's score sits on the last real token that begins before its tag ends.
    positions = [
        max(t for t, (start, stop) in enumerate(spans) if stop > start and start < end)
        for end in ends
    ]
    return list(encoded["input_ids"]), positions
