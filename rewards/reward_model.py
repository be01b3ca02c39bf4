"""Score (prompt, completion) pairs with a learned reward model.

torch is imported lazily (only when a scorer is used), so ``import alignlib.rewards`` stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
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
        import torch

        if len(prompts) != len(completions):
            raise ValueError(
                f"RewardModelScorer: got {len(prompts)} prompts but {len(completions)} "
                "completions; pass one prompt per completion (repeat prompts if needed)"
            )
        encoded = [self._encode(p, c) for p, c in zip(prompts, completions, strict=True)]
        # Longest first, so each batch pads little and an out-of-memory shows up at once.
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        device = next(self.model.parameters()).device
        scores = [0.0] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(encoded[i]) for i in idx)
            input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                input_ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            with torch.inference_mode():
                out = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
            for row, value in zip(idx, out.logits[:, 0].float().tolist(), strict=True):
                scores[row] = value
        return scores
