"""Multi-turn episodes: the policy's turns interleaved with an environment's observations (a
tool's result, a game's next state), returned as one completion per episode whose inserted
tokens are masked out of training (`Generation.loss_mask`).

An environment is any class whose instances have

    reset(**row) -> str | None     the episode's data row (its columns as keywords); called once,
                                   before turn 1; a str returned is appended to the episode's
                                   prompt (TRL: to the last user message), e.g. a game's board
    step(turn: str) -> str | None  the model's last turn, decoded (stop string included); the
                                   observation to show the model next (a list of strings: one
                                   message each, e.g. one per tool call), or None to end it;
                                   or a pair (observation, reward): the reward for this turn
    get_reward() -> float          optional: the episode's own reward, read once at its end
                                   (may be `async def`: an LLM judge)

The episode's environment reward (the `environment` reward of `online.rewards`) is its
get_reward() plus the sum of its turn rewards. A turn reward also keeps its place: it sits on
that turn's last sampled token (`Generation.turn_rewards`), where GAE (`ppo_gae`) credits it to
the tokens before it, as a gym environment's per-step reward; GiGPO (`gigpo`) compares each
turn's discounted return with those of the group's turns that acted from the same observation;
methods with one advantage per completion (GRPO and the like) see the sum.

and optionally the attributes `stop` (strings that end a model turn, e.g. a tool call's closing
tag) and `tools` (callables or JSON schemas the chat template lists in the prompt, read from one
probe instance; the built-in `tools` environment).

One instance is built per episode (`factory(**params)`), so episodes never share state. `step`
may be `async def` (a sandbox behind an HTTP client): the steps of one turn are then awaited
concurrently. This is TRL's `environment_factory` contract (`reset(**row)`, `get_reward()`) with
a text step, the form OpenRLHF's agent executors and verl's interactions also take; a TRL class
without `step`, whose public methods are its tools, runs as it is (`rollout.tools`).

Token in, token out: each turn continues the exact token ids of the episode so far (prompt,
earlier turns, observations) through `RolloutEngine.generate`, so every engine (transformers,
vLLM, Ray workers) runs episodes unchanged and the trained tokens are the sampled ones; nothing
is re-tokenized. `SamplingParams.max_new_tokens` bounds the whole completion, observations
included (TRL's `max_completion_length`); an observation that does not fit ends the episode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from alignlib.awaiting import resolve_awaitables
from alignlib.rollout.base import (
    Generation,
    Prompt,
    Prompts,
    RolloutEngine,
    SamplingParams,
)
from alignlib.rollout.environments import (
    EpisodeError,
    available_environments,
    gives_rewards,
    register_environment,
    resolve_environment,
)
from alignlib.rollout.episode import Episode, PromptEncoder, first_turns, openings
from alignlib.rollout.observations import (
    ObservationEncoder,
    ObservationFormat,
    chat_prompt_ids,
    check_renders_tools,
)

__all__ = [
    "EpisodeError",
    "EpisodeRunner",
    "EpisodeSettings",
    "available_environments",
    "register_environment",
    "resolve_environment",
]


@dataclass(frozen=True)
class EpisodeSettings:
    """How episodes run; the environment itself is the runner's factory."""

    max_turns: int = 4
    """Model turns per episode at most; the environment sees the last one, its answer is
    dropped."""
    stop: tuple[str, ...] = ()
    """Extra stop strings that end a model turn (e.g. a tool call's closing tag), added to the
    sampling's own and to the environment class's `stop` attribute."""
    observation_format: ObservationFormat = "text"
    """`text`: the observation's tokens are appended as they are. `chat`: it becomes a turn of
    `observation_role` in the tokenizer's chat template, followed by the assistant prompt."""
    observation_role: str = "tool"
    """The chat role of an observation (`chat` format)."""
    max_observation_tokens: int = 256
    """Longer observations are cut to this many tokens (a tool that prints a page)."""
    max_turn_tokens: int | None = None
    """Tokens per model turn at most (a turn cut here still gets the environment's answer);
    None: only the episode's budget, `SamplingParams.max_new_tokens`, bounds a turn."""

    def __post_init__(self) -> None:  # a config's list of stop strings is kept as a tuple
        object.__setattr__(self, "stop", tuple(self.stop))


class EpisodeRunner:
    """Runs `sampling.n` episodes per prompt through any `RolloutEngine`.

    Args:
        factory: The environment class (or any callable returning an instance).
        params: Keyword arguments for every ``factory`` call.
        tokenizer: The policy's tokenizer: decodes turns for the environment, encodes
            observations.
        settings: Turns, stop strings, observation format.
        name: How errors name the environment (the config's value).
    """

    def __init__(
        self,
        factory: Callable[..., Any],
        params: Mapping[str, Any],
        tokenizer: Any,
        settings: EpisodeSettings,
        name: str = "environment",
    ) -> None:
        self.factory, self.params, self.tokenizer = factory, dict(params), tokenizer
        self.settings, self.name = settings, name
        self._tools: list[Any] | None = None
        own_stop = getattr(factory, "stop", ())
        self.stop = tuple(dict.fromkeys([*own_stop, *settings.stop]))
        self.observation = ObservationEncoder(
            tokenizer,
            settings.observation_format,
            settings.observation_role,
            settings.max_observation_tokens,
        )

    @property
    def tools(self) -> list[Any]:
        """The tools an environment offers the model (its ``tools`` attribute: callables or JSON
        schemas, shown in the prompt by the chat template), read from one probe instance, built
        but not reset (as TRL probes an environment_factory)."""
        if not hasattr(self.factory, "tools"):
            return []
        if self._tools is None:
            self._tools = list(self._build("its tool list").tools or [])  # not reset
            if self._tools:
                check_renders_tools(self.tokenizer, self._tools)
        return self._tools

    @property
    def has_tools(self) -> bool:
        return bool(self.tools)

    def tools_for(self, row: Mapping[str, Any]) -> list[Any]:
        """The tools shown in ``row``'s prompt: this environment's, whatever the row."""
        return self.tools

    @property
    def rewards(self) -> bool:
        """Whether the environment gives each episode its own reward (``get_reward``)."""
        return gives_rewards(self.factory)

    def _build(self, where: str) -> Any:
        try:
            return self.factory(**self.params)
        except Exception as exc:  # user code: one line naming the environment
            raise self._failure(exc, "building it", where) from exc

    def new_environment(self, row: Mapping[str, Any], where: str) -> tuple[Any, str | None]:
        """A fresh environment, reset to ``row``, and the first observation its reset returned
        (appended to the episode's prompt; None: the prompt alone)."""
        environment = self._build(where)
        try:
            first = getattr(environment, "reset", lambda **_: None)(**row)
        except Exception as exc:
            raise self._failure(exc, "reset", where) from exc
        if first is not None and not isinstance(first, str):
            raise EpisodeError(
                f"environment {self.name!r}: reset returned {type(first).__name__} for {where}; "
                "return None, or a first observation as a str (appended to the prompt)"
            )
        return environment, first

    @classmethod
    def named(
        cls, name: str, params: Mapping[str, Any], tokenizer: Any, **settings: Any
    ) -> EpisodeRunner:
        """The runner of a registered environment or a ``"module:Class"`` (``settings``: the
        fields of `EpisodeSettings`, e.g. a config section's values)."""
        return cls(resolve_environment(name), params, tokenizer, EpisodeSettings(**settings), name)

    def run(
        self,
        engine: RolloutEngine,
        prompts: Prompts,
        rows: Sequence[Mapping[str, Any]],
        sampling: SamplingParams,
        encode: PromptEncoder | None = None,
    ) -> list[list[Generation]]:
        """`sampling.n` finished episodes per prompt, in prompt order, as Generations (text
        prompts go through the engine's chat template once; later turns continue its ids).
        ``encode``: how a row becomes token-id prompts, for a reset that returns a first
        observation (text prompts need none)."""
        stop = tuple(dict.fromkeys([*sampling.stop, *self.stop]))
        budget = sampling.max_new_tokens
        cap = min(budget, self.settings.max_turn_tokens or budget)
        turn_sampling = replace(sampling, stop=stop, max_new_tokens=cap)
        started = [
            [self.new_environment(row, f"prompt {p}") for _ in range(sampling.n)]
            for p, row in enumerate(rows)
        ]
        firsts = [[first for _, first in per_prompt] for per_prompt in started]
        try:
            own = openings(prompts, rows, firsts, encode) or [[p] * sampling.n for p in prompts]
        except EpisodeError as exc:
            raise EpisodeError(f"environment {self.name!r}: {exc}") from None
        if self.tools:  # text prompts: the tool list in the prompt
            own = [[self._with_tools(p) for p in per_prompt] for per_prompt in own]
        first = first_turns(engine, own, turn_sampling)
        episodes = [
            [
                Episode(g.prompt_ids, env, f"prompt {p}")
                for g, (env, _) in zip(gens, envs, strict=True)
            ]
            for p, (gens, envs) in enumerate(zip(first, started, strict=True))
        ]
        pending = [
            (e, g)
            for eps, gens in zip(episodes, first, strict=True)
            for e, g in zip(eps, gens, strict=True)
        ]
        turn = 1
        while pending:
            continuing = self._take_turns(pending, budget)
            if not continuing:
                break
            room = min(cap, max(budget - len(e.tokens) for e in continuing))
            seed = None if sampling.seed is None else (sampling.seed + 7919 * turn) & 0x7FFF_FFFF
            follow = replace(turn_sampling, n=1, max_new_tokens=room, seed=seed)
            outputs = engine.generate([e.prompt + e.tokens for e in continuing], follow)
            pending = [(e, out[0]) for e, out in zip(continuing, outputs, strict=True)]
            turn += 1
        rewards = iter(self._rewards([e for eps in episodes for e in eps]))
        return [
            [self._generation(e, p, s, next(rewards)) for s, e in enumerate(eps)]
            for p, eps in enumerate(episodes)
        ]

    def _rewards(self, episodes: list[Episode]) -> list[float | None]:
        """Each episode's get_reward() (None without one); async ones are awaited together."""
        if not self.rewards:
            return [None] * len(episodes)
        calls = []
        for episode in episodes:
            try:
                calls.append(episode.environment.get_reward())
            except Exception as exc:  # user code
                raise self._failure(exc, "get_reward", episode.where) from exc
        values: list[float | None] = []
        for episode, value in zip(episodes, resolve_awaitables(calls), strict=True):
            try:
                if isinstance(value, BaseException):
                    raise value
                values.append(float(value))
            except Exception as exc:  # user code, or a value that is not a number
                raise self._failure(exc, "get_reward", episode.where) from exc
        return values

    def _with_tools(self, prompt: Prompt) -> Prompt:
        """A text prompt as chat-template ids with the tool list; token ids as they are."""
        return (
            chat_prompt_ids(self.tokenizer, prompt, self.tools)
            if isinstance(prompt, str)
            else prompt
        )

    def _take_turns(self, pending: list[tuple[Episode, Generation]], budget: int) -> list[Episode]:
        """Append each model turn, let the environments answer; the episodes that go on."""
        turns = [episode.add_turn(generation, budget) for episode, generation in pending]
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in turns]
        calls = []
        for (episode, _), text in zip(pending, texts, strict=True):
            try:
                calls.append(episode.environment.step(text))
            except Exception as exc:  # user code
                raise self._failure(exc, "step", f"{episode.where}, turn {episode.turns}") from exc
        answers = resolve_awaitables(calls)
        continuing = []
        for (episode, _), answer in zip(pending, answers, strict=True):
            if isinstance(answer, BaseException):
                where = f"{episode.where}, turn {episode.turns}"
                raise self._failure(answer, "step", where) from answer
            if self._goes_on(episode, episode.observation_of(answer, self.name), budget):
                continuing.append(episode)
        return continuing

    def _goes_on(self, episode: Episode, answer: object, budget: int) -> bool:
        """Append the observation when the episode can take another turn after it."""
        messages = [answer] if isinstance(answer, str) else answer
        if answer is not None and not (
            isinstance(messages, list) and all(isinstance(m, str) for m in messages)
        ):
            raise EpisodeError(
                f"environment {self.name!r}: step returned {type(answer).__name__} for "
                f"{episode.where}; return the observation as a str (or a list of str), or None "
                "to end the episode (either may come with a turn reward: (observation, reward))"
            )
        if not messages or episode.full(budget) or episode.turns >= self.settings.max_turns:
            return False
        ids = self.observation(messages)  # type: ignore[arg-type]
        if len(episode.tokens) + len(ids) >= budget:  # no room for the model to answer it
            episode.finish = "length"
            return False
        episode.add_observation(ids)
        return True

    def _generation(
        self, episode: Episode, prompt: int, sample: int, reward: float | None
    ) -> Generation:
        if episode.rewarded:  # the environment's reward: get_reward() + the turn rewards
            reward = (reward or 0.0) + episode.turn_reward
        return Generation(
            prompt_index=prompt,
            prompt_ids=list(episode.prompt),
            token_ids=episode.tokens,
            text=self.tokenizer.decode(episode.tokens, skip_special_tokens=True),
            logprobs=episode.logprobs,
            finish_reason=episode.finish,
            sample_index=sample,
            loss_mask=episode.mask,
            turns=episode.turns,
            environment_reward=reward,
            turn_rewards=list(episode.rewards) if episode.rewarded else None,
            turn_ends=list(episode.reward_ends) if episode.rewarded else None,
            # A TRL class runs inside an adapter (rollout.tools); rewards read the user's object.
            environment=getattr(episode.environment, "wrapped_environment", episode.environment),
        )

    def _failure(self, exc: BaseException, method: str, where: str) -> EpisodeError:
        if isinstance(exc, EpisodeError):
            return exc
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return EpisodeError(
            f"environment {self.name!r}: {method} raised {type(exc).__name__}"
            f"{': ' + detail if detail else ''} ({where}); fix the environment"
        )
