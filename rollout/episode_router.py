"""Several environments in one run (TRL's dict `environment_factory`; verl's per-sample
interaction name): each data row names its environment in one column, and each environment's
episodes run through its own `EpisodeRunner` (its stop strings, observation format, tools)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from alignlib.rollout.base import Generation, Prompts, RolloutEngine, SamplingParams
from alignlib.rollout.environment import EpisodeRunner
from alignlib.rollout.environments import EpisodeError
from alignlib.rollout.episode import PromptEncoder
from alignlib.suggest import did_you_mean

__all__ = ["EpisodeRouter", "check_row_environment", "check_rows_name_environments", "episodes_for"]


def check_row_environment(
    row: Mapping[str, Any], names: Sequence[str], field: str, section: str = "online"
) -> str:
    """The environment ``row`` names in column ``field``; one line when it is not in
    ``names`` (the config keys under ``section``: `online` or `eval`)."""
    name = row.get(field)
    if name not in names:
        hint = did_you_mean(name, names) if isinstance(name, str) else ""
        raise EpisodeError(
            f"column {field!r} is {name!r}{hint}, not one of the environments of "
            f"{section}.environments ({', '.join(names)}); give every row one of them "
            f"({section}.environment_field names the column)"
        )
    return name  # type: ignore[return-value]


def check_rows_name_environments(
    rows: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    field: str,
    where: str,
    section: str = "online",
) -> None:
    """Every row names one of ``names`` in column ``field``: one line naming the first row
    that does not (``where``: the data set, e.g. `data.path x.jsonl`)."""
    for index, row in enumerate(rows, start=1):
        try:
            check_row_environment(row, names, field, section)
        except EpisodeError as exc:
            raise EpisodeError(f"{where} row {index}: {exc}") from None


class EnvironmentSpec(Protocol):
    """An environment section (`online.environment`, `eval.environments.<name>`)."""

    name: str
    params: dict[str, Any]

    def episode_settings(self) -> dict[str, Any]: ...


def episodes_for(
    single: EnvironmentSpec | None,
    several: Mapping[str, EnvironmentSpec],
    field: str,
    tokenizer: Any,
    section: str = "online",
) -> EpisodeRunner | EpisodeRouter | None:
    """The episodes of one environment section, or of several by each row's ``field`` column
    (config keys under ``section``); None: one turn per completion."""

    def runner(spec: EnvironmentSpec) -> EpisodeRunner:
        return EpisodeRunner.named(spec.name, spec.params, tokenizer, **spec.episode_settings())

    if single is not None:
        return runner(single)
    if several:
        runners = {name: runner(spec) for name, spec in several.items()}
        return EpisodeRouter(runners, field, section)
    return None


class EpisodeRouter:
    """Runs each row's episodes with the runner its ``field`` column names.

    The column is a control field: it is not passed to the environment's ``reset`` (as in
    TRL). When some environment rewards its episodes (get_reward, or a step's turn reward)
    and another does not, the other's episodes get an environment reward of 0 (TRL: no
    opinion)."""

    def __init__(
        self,
        runners: Mapping[str, EpisodeRunner],
        field: str = "environment",
        section: str = "online",
    ) -> None:
        if not runners:
            raise EpisodeError("give at least one environment")
        self.runners, self.field, self.section = dict(runners), field, section

    @property
    def rewards(self) -> bool:
        """Whether some environment rewards its episodes (``get_reward``)."""
        return any(runner.rewards for runner in self.runners.values())

    @property
    def has_tools(self) -> bool:
        return any(runner.has_tools for runner in self.runners.values())

    def runner_for(self, row: Mapping[str, Any], where: str) -> EpisodeRunner:
        """The runner of the environment ``row`` names; one line when it names none."""
        try:
            names = list(self.runners)
            return self.runners[check_row_environment(row, names, self.field, self.section)]
        except EpisodeError as exc:
            raise EpisodeError(f"{where}: {exc}") from None

    def tools_for(self, row: Mapping[str, Any]) -> list[Any]:
        """The tools the row's environment shows in its prompt."""
        return self.runner_for(row, "a row").tools_for(row)

    def _encoder(self, encode: PromptEncoder, name: str) -> PromptEncoder:
        """``encode`` for rows that lost their environment column (reset never sees it)."""
        return lambda row: encode({**row, self.field: name})

    def run(
        self,
        engine: RolloutEngine,
        prompts: Prompts,
        rows: Sequence[Mapping[str, Any]],
        sampling: SamplingParams,
        encode: PromptEncoder | None = None,
    ) -> list[list[Generation]]:
        """`sampling.n` episodes per prompt, in prompt order; each environment's prompts go
        through its runner together (``encode``: as `EpisodeRunner.run` takes it)."""
        groups: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            self.runner_for(row, f"prompt {index}")
            groups.setdefault(row[self.field], []).append(index)
        out: list[list[Generation]] = [[] for _ in rows]
        for name, indices in groups.items():
            runner = self.runners[name]
            own_rows = [{k: v for k, v in rows[i].items() if k != self.field} for i in indices]
            own_encode = None if encode is None else self._encoder(encode, name)
            own_prompts = [prompts[i] for i in indices]
            generations = runner.run(engine, own_prompts, own_rows, sampling, own_encode)
            for index, gens in zip(indices, generations, strict=True):
                out[index] = [replace(g, prompt_index=index) for g in gens]
        flat = [g for gens in out for g in gens]
        if self.rewards or any(g.environment_reward is not None for g in flat):
            out = [  # episodes of an environment that gave no reward get 0
                [
                    g if g.environment_reward is not None else replace(g, environment_reward=0.0)
                    for g in gens
                ]
                for gens in out
            ]
        return out
