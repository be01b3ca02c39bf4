"""One episode: its opening (the prompt, plus the first observation the environment's ``reset``
returned, a game's board or a task statement, appended to the last user turn as TRL does),
turn 1 sampled from the openings, and the completion as it grows turn by turn."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from alignlib.rollout.base import (
    FinishReason,
    Generation,
    Prompt,
    Prompts,
    RolloutEngine,
    SamplingParams,
)
from alignlib.rollout.environments import EpisodeError

PromptEncoder = Callable[[Mapping[str, Any]], Prompt]
"""A data row → the prompt as the runner is given prompts (the trainer's prompt token ids)."""


def with_observation(prompt: Any, observation: str) -> Any:
    """``prompt`` (a string, or chat messages) with ``observation`` appended to its text (to the
    last message's content)."""
    if isinstance(prompt, str):
        return prompt + observation
    last = prompt[-1] if isinstance(prompt, list) and prompt else None
    if isinstance(last, Mapping) and isinstance(last.get("content"), str):
        return [*prompt[:-1], {**last, "content": last["content"] + observation}]
    raise EpisodeError(
        "an environment's reset returned a first observation, which is appended to the prompt; "
        f"this row's prompt is {type(prompt).__name__}, not text or chat messages ending in text"
    )


def openings(
    prompts: Prompts,
    rows: Sequence[Mapping[str, Any]],
    firsts: list[list[str | None]],
    encode: PromptEncoder | None,
) -> list[list[Prompt]] | None:
    """Each episode's own prompt (``firsts[p][s]``: what sample s's reset returned), or None when
    no reset returned anything (every episode of a prompt starts from it)."""
    if all(first is None for per_prompt in firsts for first in per_prompt):
        return None
    out: list[list[Prompt]] = []
    for prompt, row, per_prompt in zip(prompts, rows, firsts, strict=True):
        own: list[Prompt] = []
        for first in per_prompt:
            if first is None:
                own.append(prompt)
            elif isinstance(prompt, str):
                own.append(with_observation(prompt, first))
            elif encode is not None and "prompt" in row:
                own.append(encode({**row, "prompt": with_observation(row["prompt"], first)}))
            else:
                raise EpisodeError(
                    "an environment's reset returned a first observation, and these prompts are "
                    "token ids with no way to re-encode them; pass text prompts, or encode= to "
                    "EpisodeRunner.run"
                )
        out.append(own)
    return out


def first_turns(
    engine: RolloutEngine, prompts: list[list[Prompt]], sampling: SamplingParams
) -> list[list[Generation]]:
    """Turn 1 of ``sampling.n`` episodes per prompt, ``prompts[p][s]`` the opening of sample s:
    one call when each prompt's openings agree, else one call per sample with its own seed (a
    seeded engine would answer identical prompts alike)."""
    if all(all(o == own[0] for o in own) for own in prompts):
        return engine.generate([own[0] for own in prompts], sampling)
    out: list[list[Generation]] = [[] for _ in prompts]
    for sample in range(sampling.n):
        seed = None if sampling.seed is None else (sampling.seed + 104_729 * sample) & 0x7FFF_FFFF
        call = replace(sampling, n=1, seed=seed)
        for index, gens in enumerate(engine.generate([own[sample] for own in prompts], call)):
            out[index].append(replace(gens[0], prompt_index=index, sample_index=sample))
    return out


@dataclass
class Episode:
    """One prompt's sample as it grows: completion tokens, their log-probs and loss mask."""

    prompt: list[int]
    environment: Any
    where: str
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    """Per completion token, the turn reward the environment gave on it (a turn's reward sits
    on that turn's last sampled token); 0 elsewhere."""
    rewarded: bool = False
    """Whether a step returned a turn reward (then the episode carries `rewards`)."""
    reward_ends: list[int] = field(default_factory=list)
    """The tokens a turn reward sits on, in order (one of 0 included)."""
    turn_reward: float = 0.0
    """The sum of the turn rewards, including one given before any token was sampled."""
    turns: int = 0
    finish: FinishReason = "stop"

    def add_turn(self, generation: Generation, budget: int) -> list[int]:
        """Append the model's turn, cut to what is left of the budget; returns its tokens."""
        room = budget - len(self.tokens)
        ids = generation.token_ids[:room]
        self.tokens += ids
        self.logprobs += generation.logprobs[:room]
        self.mask += [1] * len(ids)
        self.rewards += [0.0] * len(ids)
        self.turns += 1
        cut = len(generation.token_ids) > room
        self.finish = "length" if cut else generation.finish_reason
        return ids

    def full(self, budget: int) -> bool:
        """No room left for another turn."""
        return len(self.tokens) >= budget

    def add_observation(self, ids: list[int]) -> None:
        self.tokens += ids
        self.logprobs += [0.0] * len(ids)
        self.mask += [0] * len(ids)
        self.rewards += [0.0] * len(ids)

    def observation_of(self, answer: object, environment: str) -> object:
        """The observation of a step's answer; a turn reward it carries (a pair (observation,
        reward)) goes to the episode (``environment``: how errors name it)."""
        if not isinstance(answer, tuple):
            return answer
        reward = answer[1] if len(answer) == 2 else None
        if (
            isinstance(reward, bool)
            or not isinstance(reward, int | float)
            or not math.isfinite(reward)
        ):
            raise EpisodeError(
                f"environment {environment!r}: step returned a tuple for {self.where}, turn "
                f"{self.turns}, that is not (observation, reward) with a finite number "
                f"(got {answer!r:.80}); return the observation alone, or the pair"
            )
        self.add_reward(float(reward))
        return answer[0]

    def add_reward(self, value: float) -> None:
        """The environment's reward for the turn just taken, on its last sampled token (the
        last one the policy sampled so far, if the turn was cut to nothing)."""
        self.rewarded = True
        self.turn_reward += value
        sampled = [t for t, m in enumerate(self.mask) if m]
        if sampled:  # else only the episode's total carries it
            self.rewards[sampled[-1]] += value
            if sampled[-1] not in self.reward_ends:
                self.reward_ends.append(sampled[-1])
