"""The `online.environment:` / `eval.environment:` sections: multi-turn episodes in which an
environment (a tool, a game, a sandbox) answers each model turn (alignlib.rollout.environment)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from alignlib.config.section import Section


class EnvironmentConfig(Section):
    name: str
    """A registered environment (`calculator`: arithmetic in <calculator>…</calculator> tags,
    answered with <result>…</result>; `tools`: Python functions called as the model's
    <tool_call> JSON, their schemas in the prompt, params {functions: [module:function, ...]})
    or your class as `package.module:Class` with
    `reset(**row)` (a str it returns is appended to the episode's prompt, as in TRL),
    `step(turn)` returning the observation (a str) or None to end the episode
    (may be `async def`), or the pair (observation, reward) to reward the turn (gym's
    per-step reward: GAE credits it to the turn's tokens), and optionally `get_reward()`
    returning a float (TRL's
    environment_factory contract with a text step). A TRL environment_factory class without
    `step` runs as it is: its public methods are the tools (Hermes tool calls; needs a chat
    template that lists tools). One instance per episode."""
    params: dict[str, Any] = {}  # noqa: RUF012 (pydantic copies defaults per instance)
    """Keyword arguments for the class (e.g. {max_calls: 4} for `calculator`)."""
    max_turns: int = Field(4, ge=1)
    """Model turns per episode at most. rollout.max_new_tokens bounds the whole completion,
    observations included; an observation that does not fit ends the episode."""
    stop: list[str] = []  # noqa: RUF012
    """Extra stop strings that end a model turn (a tool call's closing tag), beside the class's
    own `stop` attribute (`calculator`: </calculator>)."""
    observation_format: Literal["text", "chat"] = "text"
    """`text`: the observation's tokens follow the turn as they are. `chat`: the observation is
    a turn of `observation_role` in the tokenizer's chat template, then the assistant prompt
    (the model ends its turn with EOS, as chat models calling tools do)."""
    observation_role: str = "tool"
    """The chat role of observations (`chat` format); `user` for templates without a tool
    role."""
    max_observation_tokens: int = Field(256, gt=0)
    """Observations are cut to this many tokens."""
    max_turn_tokens: int | None = Field(None, gt=0)
    """Tokens per model turn at most (the environment still answers a turn cut here); null:
    only rollout.max_new_tokens, the whole episode's budget, bounds a turn."""

    def episode_settings(self) -> dict[str, Any]:
        """The fields of `alignlib.rollout.environment.EpisodeSettings` (all but name, params)."""
        return self.model_dump(exclude={"name", "params"})


def episode_sections(
    section: str, environment: EnvironmentConfig | None, environments: dict[str, EnvironmentConfig]
) -> dict[str, EnvironmentConfig]:
    """Every environment section of ``section`` (`online`, `eval`) by its config key
    (`<section>.environment`, or `<section>.environments.<name>` each); empty for one turn.
    One line when both keys are set."""
    if environment is not None and environments:
        raise ValueError(
            f"{section}.environment and {section}.environments are both set; use environment "
            "for one environment, environments for several (each row names its own)"
        )
    if environment is not None:
        return {f"{section}.environment": environment}
    return {f"{section}.environments.{name}": s for name, s in environments.items()}
