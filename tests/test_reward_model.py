"""RewardModelScorer on a tiny random LlamaForSequenceClassification (offline)."""

from __future__ import annotations

import math

import pytest
from transformers import LlamaForSequenceClassification

from alignlib.rewards import RewardModelScorer
from alignlib.testing import build_tiny_classifier, build_tokenizer

PROMPTS = [
    "What is 12 + 30?",
    "Solve for x: 3x + 5 = 20.",
    "Hello!",
    "A rectangle has length 12 and width 5. What is its area?",
    "Compute 2^10.",
]
COMPLETIONS = [
    "The answer is \\boxed{42}.",
    "Subtract 5 from both sides, then divide by 3, so x = 5.",
    "Hello! How can I help you today?",
    "Its area is 60.",
    "2^10 = 1024, so \\boxed{1024}.",
]


@pytest.fixture(scope="module")
def scorer_parts() -> tuple[LlamaForSequenceClassification, object]:
    tokenizer = build_tokenizer()
    model = build_tiny_classifier(tokenizer, LlamaForSequenceClassification, num_labels=1)
    return model, tokenizer


def test_scores_are_finite_deterministic_and_batch_invariant(scorer_parts) -> None:
    model, tokenizer = scorer_parts
    one = RewardModelScorer(model, tokenizer, batch_size=1)(PROMPTS, COMPLETIONS)
    assert len(one) == len(PROMPTS)
    assert all(isinstance(s, float) and math.isfinite(s) for s in one)
    assert len({round(s, 6) for s in one}) > 1  # the model does look at the text
    again = RewardModelScorer(model, tokenizer, batch_size=1)(PROMPTS, COMPLETIONS)
    assert again == one
    for batch_size in (2, 3, 8):
        batched = RewardModelScorer(model, tokenizer, batch_size=batch_size)(PROMPTS, COMPLETIONS)
        assert batched == pytest.approx(one, abs=1e-5)


def test_uses_chat_template(scorer_parts) -> None:
    model, tokenizer = scorer_parts
    text = RewardModelScorer(model, tokenizer).render("Q?", "A.")
    assert text.startswith("<|im_start|>user\nQ?<|im_end|>")
    assert "<|im_start|>assistant\nA.<|im_end|>" in text


def test_errors(scorer_parts) -> None:
    model, tokenizer = scorer_parts
    scorer = RewardModelScorer(model, tokenizer)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        scorer(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        RewardModelScorer(model, tokenizer, batch_size=0)
