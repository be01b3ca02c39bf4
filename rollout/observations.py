"""An environment's observation as tokens: its text cut to a token limit, then as plain text or
as a turn of the tokenizer's chat template (`online.environment.observation_format`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

ObservationFormat = Literal["text", "chat"]


class ObservationError(ValueError):
    """A chat template that cannot show observations as configured."""


class ObservationEncoder:
    """An observation's token ids: each message cut to the token limit, then as plain text
    (messages joined by newlines) or as chat turns (the template's rendering of the messages
    after an assistant message that ended with EOS, and the next assistant prompt), so the model
    sees what its chat format shows."""

    def __init__(
        self,
        tokenizer: Any,
        kind: ObservationFormat = "text",
        role: str = "tool",
        max_tokens: int = 256,
    ) -> None:
        self.tokenizer, self.role, self.max_tokens = tokenizer, role, max_tokens
        self.wrap: Callable[[list[str]], str] = "\n".join
        if kind == "chat":
            self.wrap = self._chat_turns
            self._chat_turns(["x"])  # a template that cannot render the role fails at start

    def __call__(self, observation: str | list[str]) -> list[int]:
        messages = [observation] if isinstance(observation, str) else observation
        return self.tokenizer.encode(
            self.wrap([self._cut(m) for m in messages]), add_special_tokens=False
        )

    def _cut(self, text: str) -> str:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.decode(ids[: self.max_tokens]) if len(ids) > self.max_tokens else text

    def _chat_turns(self, texts: list[str]) -> str:
        tokenizer, role = self.tokenizer, self.role
        if not getattr(tokenizer, "chat_template", None):
            raise ObservationError(
                "online.environment.observation_format: chat needs a tokenizer with a chat "
                "template; this one has none (use observation_format: text)"
            )
        before = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        try:
            prefix = tokenizer.apply_chat_template(before, tokenize=False)
            full = tokenizer.apply_chat_template(
                [*before, *({"role": role, "content": text} for text in texts)],
                tokenize=False,
                add_generation_prompt=True,
            )
        except Exception as exc:  # the template's own check (e.g. strict role alternation)
            raise ObservationError(
                f"online.environment.observation_role: the chat template cannot render a "
                f"{role!r} turn after the assistant ({type(exc).__name__}: {exc}); pick a role it "
                "accepts (user, tool) or observation_format: text"
            ) from None
        eos = tokenizer.eos_token or ""
        cut = prefix[: prefix.rfind(eos) + len(eos)] if eos and eos in prefix else prefix
        if not full.startswith(cut):
            raise ObservationError(
                "online.environment.observation_format: chat: the template renders the "
                "conversation differently once an observation follows; use observation_format: text"
            )
        return full[len(cut) :]


def chat_prompt_ids(tokenizer: Any, prompt: str, tools: list[Any]) -> list[int]:
    """A text prompt as one user turn of the chat template, with ``tools`` (callables or JSON
    schemas) in the template's tool list (``check_renders_tools`` first)."""
    messages = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False
    )
    return tokenizer.encode(text, add_special_tokens=False)


def check_renders_tools(tokenizer: Any, tools: list[Any]) -> None:
    """One line when the chat template would drop the tool list (the model would never learn
    which tools exist)."""
    messages = [{"role": "user", "content": "q"}]
    bare = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    shown = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True
    )
    if shown == bare:
        raise ObservationError(
            "online.environment: the environment has tools, but this tokenizer's chat template "
            "does not show a tool list (use a model whose template renders tools, e.g. Qwen2.5 "
            "or Qwen3, or describe the tools in the prompt and use an environment without them)"
        )
