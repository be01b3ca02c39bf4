"""Offline rows are rendered whole through the tokenizer's chat template: the trained tokens are
the template's own rendering (through the assistant turn's end-of-turn token, which is not EOS
for Llama-3 or Gemma), and the completion mask covers exactly the assistant turn."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trl

from alignlib.data import collate, encode_example
from alignlib.testing import CHAT_TEMPLATE, build_tokenizer

TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"
CHATML_GENERATION = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] }}"
    "{{ '<|im_end|>\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# name: (template, extra special tokens, end-of-turn token)
TEMPLATES = {
    "chatml": (CHAT_TEMPLATE, [], "<|im_end|>"),
    "chatml-generation": (CHATML_GENERATION, [], "<|im_end|>"),
    "llama3": (
        (TRL_TEMPLATES / "llama3.jinja").read_text(),
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|eot_id|>",
    ),
    "llama3-generation": (
        (TRL_TEMPLATES / "llama3_training.jinja").read_text(),
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|eot_id|>",
    ),
    "gemma": (
        (TRL_TEMPLATES / "gemma.jinja").read_text(),
        ["<start_of_turn>", "<end_of_turn>"],
        "<end_of_turn>",
    ),
    "gemma-generation": (
        (TRL_TEMPLATES / "gemma_training.jinja").read_text(),
        ["<start_of_turn>", "<end_of_turn>"],
        "<end_of_turn>",
    ),
}
PROMPT = "What is 12 + 30?"
ANSWER = "The answer is \\boxed{42}."


def tokenizer_for(name: str):
    template, specials, _ = TEMPLATES[name]
    tok = build_tokenizer()
    if specials:
        tok.add_tokens(specials, special_tokens=True)
    tok.chat_template = template
    return tok


def rendering(tok, prompt: str, answer: str) -> list[int]:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return list(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_trained_tokens_are_the_templates_rendering(name: str, monkeypatch) -> None:
    tok = tokenizer_for(name)
    if name.endswith("-generation"):  # the template's own assistant mask is what is used
        monkeypatch.setattr(sys.modules["alignlib.data.collate"], "_rendered", None)
    end = TEMPLATES[name][2]
    example = encode_example(tok, {"prompt": PROMPT, "completion": ANSWER}, "sft", index=0)
    (sequence,), (start,) = example.sequences, example.completion_starts
    full = rendering(tok, PROMPT, ANSWER)
    assert sequence == full[: len(sequence)]
    assert tok.decode(full[len(sequence) :]).strip() == ""  # only the newline after the turn
    trained = collate([example], pad_id=tok.pad_token_id)
    mask = trained.completion_mask[0].bool().tolist()
    assert mask == [False] * start + [True] * (len(sequence) - start)
    assert tok.decode(sequence[start:]) == ANSWER + end
    assert sequence[-1] == tok.convert_tokens_to_ids(end)
    if end != tok.eos_token:
        assert tok.eos_token_id not in sequence  # the old code appended EOS, never generated


@pytest.mark.parametrize("name", ["llama3", "gemma-generation"])
def test_preference_pairs_share_the_rendered_prompt(name: str) -> None:
    tok = tokenizer_for(name)
    row = {"prompt": PROMPT, "chosen": ANSWER, "rejected": "It is 41."}
    example = encode_example(tok, row, "preference", index=3)
    chosen, rejected = example.sequences
    start = example.completion_starts[0]
    assert example.completion_starts == [start, start]
    assert chosen[:start] == rejected[:start]
    assert chosen == rendering(tok, PROMPT, ANSWER)[: len(chosen)]
    assert rejected == rendering(tok, PROMPT, "It is 41.")[: len(rejected)]


def test_messages_rows_and_conversational_prompts() -> None:
    tok = tokenizer_for("llama3")
    messages = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}]
    by_messages = encode_example(tok, {"messages": messages}, "sft", index=0)
    by_columns = encode_example(
        tok, {"prompt": messages[:1], "completion": messages[1:]}, "sft", index=0
    )
    assert by_messages.sequences == by_columns.sequences
    assert by_messages.completion_starts == by_columns.completion_starts


def test_a_long_completion_keeps_its_start_and_end_of_turn() -> None:
    tok = tokenizer_for("gemma")
    example = encode_example(
        tok, {"prompt": PROMPT, "completion": ANSWER * 20}, "sft", index=0, max_completion_length=8
    )
    completion = example.sequences[0][example.completion_starts[0] :]
    assert len(completion) == 8
    assert completion[-1] == tok.convert_tokens_to_ids("<end_of_turn>")


def test_without_a_template_the_completion_gets_eos() -> None:
    tok = build_tokenizer()
    example = encode_example(
        tok, {"prompt": PROMPT, "completion": ANSWER}, "sft", index=0, chat=False
    )
    sequence, start = example.sequences[0], example.completion_starts[0]
    assert tok.decode(sequence[:start]) == PROMPT + "\n"
    assert sequence[start:] == [*tok.encode(ANSWER, add_special_tokens=False), tok.eos_token_id]
