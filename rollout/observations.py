"""An environment's observation as tokens: its text cut to a token limit, then as plain text or
as a turn of the tokenizer's chat template (`online.environment.observation_format`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

ObservationFormat = Literal["text", "chat"]


class ObservationError(ValueError):
    """A chat template that cannot show observations as configured."""


class ObservationEncoder:
    """An observation's token ids: its text cut to the token limit, then as plain text or as a
    chat turn (the template's rendering of the turn after an assistant message that ended with
    EOS, and the next assistant prompt), so the model sees what its chat format shows."""

    def __init__(
        self,
        tokenizer: Any,
        kind: ObservationFormat = "text",
        role: str = "tool",
        max_tokens: int = 256,
    ) -> None:
        self.tokenizer, self.role, self.max_tokens = tokenizer, role, max_tokens
        self.wrap: Callable[[str], str] = lambda text: text
        if kind == "chat":
            self.wrap = self._chat_turn
            self._chat_turn("x")  # a template that cannot render the role fails at start

    def __call__(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > self.max_tokens:
            text = self.tokenizer.decode(ids[: self.max_tokens])
        return self.tokenizer.encode(self.wrap(text), add_special_tokens=False)

    def _chat_turn(self, text: str) -> str:
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
                [*before, {"role": role, "content": text}],
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
