"""Score (prompt, completion) pairs with a learned reward model.

torch is imported lazily (only when a scorer is used), so ``import alignlib.rewards`` stays light.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["RewardModelScorer", "pad_token_id"]


def pad_token_id(tokenizer: Any, who: str) -> int:
    """The id batched scoring pads with: the tokenizer's pad token, else its eos token."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError(
            f"{who}: the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token "
            "first"
        )
    return int(pad_id)


class RewardModelScorer:
    """Reward from a transformers ``AutoModelForSequenceClassification`` with ``num_labels=1``.

    Each pair is rendered with the tokenizer's chat template (a user turn and an assistant turn)
    if it has one, else as ``prompt + completion``. Sequences are right-padded, so a causal
    model's score, read at the last non-pad token, does not depend on the batch it is in.

    Args:
        model: The reward model; put in eval mode here. Its ``config.pad_token_id`` is set to
            the tokenizer's pad (or eos) token if missing, which batched scoring needs.
        tokenizer: The model's tokenizer.
        batch_size: Pairs per forward pass.
        max_length: If set, keep only the last ``max_length`` tokens of each pair (the end,
            where the score is read, matters most).
    """

    def __init__(
        self, model: Any, tokenizer: Any, batch_size: int = 8, max_length: int | None = None
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"RewardModelScorer: batch_size must be >= 1, got {batch_size}")
        if getattr(model.config, "num_labels", 1) != 1:
            raise ValueError(
                f"RewardModelScorer: the model has num_labels={model.config.num_labels}; a reward "
                "model needs num_labels=1 (AutoModelForSequenceClassification(..., num_labels=1))"
            )
        pad_id = pad_token_id(tokenizer, "RewardModelScorer")
        if model.config.pad_token_id is None:
            model.config.pad_token_id = pad_id
        self.pad_id = int(model.config.pad_token_id)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length

    def render(self, prompt: str | Sequence[dict[str, Any]], completion: str) -> str:
        """The text the model sees for one pair; a conversational prompt (a message list) is
        its messages, the completion the assistant's turn after them."""
        if getattr(self.tokenizer, "chat_template", None):
            turns = (
                [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            )
            messages = [*turns, {"role": "assistant", "content": completion}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        if not isinstance(prompt, str):
            prompt = "\n".join(str(m.get("content", "")) for m in prompt)
        return prompt + completion

    def _encode(self, prompt: str | Sequence[dict[str, Any]], completion: str) -> list[int]:
        chat = bool(getattr(self.tokenizer, "chat_template", None))
        # The chat template already writes its own special tokens.
        ids = self.tokenizer(self.render(prompt, completion), add_special_tokens=not chat)
        ids = list(ids["input_ids"])
        if not ids:
            raise ValueError("RewardModelScorer: a (prompt, completion) pair encoded to 0 tokens")
        return ids[-self.max_length :] if self.max_length else ids

    def __call__(
        self, prompts: Sequence[str | Sequence[dict[str, Any]]], completions: Sequence[str]
    ) -> list[float]:
        """One float score per (prompt, completion) pair."""

        same_count("RewardModelScorer", prompts, completions)
        encoded = [self._encode(p, c) for p, c in zip(prompts, completions, strict=True)]
        scores = [0.0] * len(encoded)
        for idx, logits in forward_in_batches(self.model, encoded, self.batch_size, self.pad_id):
            for row, value in zip(idx, logits[:, 0].tolist(), strict=True):
                scores[row] = value
        return scores


def same_count(who: str, prompts: Sequence[Any], completions: Sequence[str]) -> None:
    """One prompt per completion, or one line saying so."""
    if len(prompts) != len(completions):
        raise ValueError(
            f"{who}: got {len(prompts)} prompts but {len(completions)} completions; pass one "
            "prompt per completion (repeat prompts if needed)"
        )


def forward_in_batches(
    model: Any, sequences: list[list[int]], batch_size: int, pad_id: int
) -> Iterator[tuple[list[int], Any]]:
    """(the sequences' indices, the model's float logits for them) for batches of right-padded
    sequences, longest first (each batch pads little and an out-of-memory shows up at once),
    without gradient, on the model's device."""
    import torch

    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(sequences[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            input_ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
            mask[row, : len(sequences[i])] = 1
        with torch.inference_mode():
            out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
        yield idx, out.logits.float()
