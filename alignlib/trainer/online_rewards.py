"""The reward of each completion in an online run: the weighted sum of `online.rewards`. Built
in: `math` (graded in one batch against the row's answer), `environment` (the episode's own
reward from a multi-turn environment: its get_reward() plus the rewards its steps gave turn by
turn), and the learned `reward_model` and `process_reward_model` (scored in batches on the
run's device; a PRM with `reduce: steps` also places each step's score on the step)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from alignlib.config.rewards import RewardSpec
from alignlib.data.formats import with_prompt_field
from alignlib.rewards import (
    RewardError,
    check_params,
    grade_many,
    math_reward,
    missing_columns,
    reads_environments,
    resolve_reward,
    score_batch,
)
from alignlib.rewards.learned import PARAMS as LEARNED_PARAMS
from alignlib.rewards.learned import LearnedReward

StepScores = list[list[list[tuple[int, float]]]]
"""Per completion, per process reward model with `reduce: steps`, its weighted (character
offset where a step ends, score) pairs."""


@dataclass
class Scores:
    """N completions scored."""

    total: Tensor
    """[N] the weighted sum of the rewards."""
    correct: Tensor
    """[N] bool: the math grader's verdict (rows with `answer`), else total > threshold."""
    parts: dict[str, Tensor] = field(default_factory=dict)
    """Each reward's own value ([N], before its weight), by its label (``reward_labels``)."""
    steps: StepScores = field(default_factory=list)


def reward_labels(specs: Sequence[RewardSpec]) -> list[str]:
    """A short, unique name per reward for its metrics: `math`, a function's own name for
    `module:function` (TRL logs `rewards/<function>`), `_2`, `_3`... for repeats."""
    labels: list[str] = []
    for spec in specs:
        label = spec.name.rpartition(":")[2] or spec.name
        labels.append(label if label not in labels else f"{label}_{len(labels) + 1}")
    return labels


MATH_PARAMS = ("timeout_s",)
"""What `{name: math, params: ...}` may set: math is graded in one batch, not called per row."""
ENVIRONMENT = "environment"
"""The reward name that reads each episode's environment reward (Generation.environment_reward,
which includes its turn rewards)."""


def online_rows(rows: list[dict[str, Any]], data: Any, source: str) -> list[dict[str, Any]]:
    """Rows with `prompt` read from `data.prompt_field` and `answer` from `data.answer_field`
    (``data``: the run's DataConfig; ``source``: the file, for errors); the columns keep their
    names too."""
    rows = with_prompt_field(rows, data.prompt_field, source)
    return with_answer_field(rows, data.answer_field)


def with_answer_field(rows: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
    """Rows whose `answer` is the `data.answer_field` column (TRL calls it `solution`): the
    math grader and every reward read the gold answer as `answer`; the column keeps its name."""
    if field == "answer":
        return rows
    return [{**row, "answer": row.get(field)} for row in rows]


class RewardModel:
    """The weighted sum of the configured reward functions; `math` is graded in one batch.

    Parameters are checked against each function's signature when this is built, so a
    misspelled one is refused instead of swallowed; every value must be a finite number unless
    ``allow_nonfinite`` (`train.nonfinite: skip`). ``episodes``: completions are multi-turn
    episodes, so TRL rewards may read their `environments`; ``environment_rewards``: the
    episodes may carry an environment's reward (get_reward, or turn rewards from its steps),
    so the `environment` name may be listed. Learned reward models load onto ``device`` when
    they first score."""

    def __init__(
        self,
        specs: Sequence[RewardSpec],
        threshold: float,
        allow_nonfinite: bool = False,
        environment_rewards: bool = False,
        episodes: bool = False,
        device: torch.device | None = None,
    ) -> None:
        self.specs = list(specs)
        self.labels = reward_labels(self.specs)
        self.threshold = threshold
        self.allow_nonfinite = allow_nonfinite
        # None stands for the environment reward: read from the episodes, it has no function.
        self.functions: list[Callable[..., float] | LearnedReward | None] = []
        for index, spec in enumerate(self.specs):
            key = f"online.rewards[{index}].params"
            if spec.name in LEARNED_PARAMS:
                learned = LearnedReward.checked(spec.name, spec.params, key, device)
                if learned.per_step and episodes:
                    raise RewardError(
                        f"{key}.reduce: steps places a PRM's step scores in a one-turn "
                        "completion; multi-turn episodes take min, last, mean or product"
                    )
                self.functions.append(learned)
                continue
            fn = self._function(index, spec, environment_rewards)
            valid = MATH_PARAMS if fn is math_reward else () if fn is None else None
            check_params(spec.name, fn, spec.params, key, valid)
            if fn is not None and not episodes and reads_environments(fn, spec.form):
                raise RewardError(
                    f"online.rewards[{index}].name: {spec.name} reads `environments` (TRL's "
                    "episode environments), which only multi-turn episodes have; set "
                    "online.environment, or use a reward that reads the completions"
                )
            self.functions.append(fn)
        math_params = [s.params for s in self.specs if s.name == "math"]
        self.math_timeout = float(math_params[0].get("timeout_s", 5.0)) if math_params else 5.0

    @property
    def environment_weight(self) -> float:
        """The weight of the environment's reward in the total (that of its turn rewards)."""
        return sum(s.weight for s in self.specs if s.name == ENVIRONMENT)

    @staticmethod
    def _function(
        index: int, spec: RewardSpec, environment_rewards: bool
    ) -> Callable[..., float] | None:
        if spec.name == "math":
            return math_reward
        if spec.name == ENVIRONMENT:
            if not environment_rewards:
                raise RewardError(
                    f"online.rewards[{index}].name: environment is the episode reward of a "
                    "multi-turn environment (its get_reward() and turn rewards); set "
                    "online.environment to a class that gives one, or remove this reward"
                )
            return None
        try:
            return resolve_reward(spec.name)
        except (TypeError, ValueError) as exc:
            raise RewardError(f"online.rewards[{index}].name: {exc}") from None

    def check(self, row: dict[str, Any], where: str) -> None:
        """``row`` must hold every column a reward needs (math: a non-null `answer`)."""
        for spec, fn in zip(self.specs, self.functions, strict=True):
            plain = fn is None or isinstance(fn, LearnedReward)  # these read no columns
            missing = [] if plain else missing_columns(fn, spec.params, row)
            if missing:
                others = sorted(set(row) - {"prompt", "solution", missing[0]})
                rename = (
                    f"data.answer_field: {others[0]} reads it from {others[0]!r}, or "
                    if missing[0] == "answer" and len(others) == 1
                    else ""
                )
                raise RewardError(
                    f"{where}: reward {spec.name!r} needs field {missing[0]!r}, which this row "
                    f"lacks or leaves null (the row has {', '.join(sorted(row))}); {rename}fill "
                    "it in, drop the row, or use rewards that do not need it"
                )

    def check_rows(self, rows: Sequence[dict[str, Any]], source: str) -> None:
        """Every row, by number: a row without an answer must not be graded against 'None'."""
        for index, row in enumerate(rows, start=1):
            self.check(row, f"{source} row {index}")

    def score(
        self,
        texts: list[str],
        num_tokens: list[int],
        rows: list[dict[str, Any]],
        token_ids: list[list[int]] | None = None,
        environment: Sequence[float | None] | None = None,
        environments: Sequence[Any] | None = None,
    ) -> Scores:
        """N completions scored, ``rows[i]`` the data row of text i (``token_ids``: the
        completions' tokens, for TRL rewards that read completion_ids; ``environment``: each
        episode's environment reward; ``environments``: each episode's environment instance,
        for TRL rewards that read them): the weighted total, each reward's own values, and each
        completion's weighted step scores from the process reward models that place them
        (`reduce: steps`; included in the total)."""
        steps: StepScores = [[] for _ in texts]
        parts: dict[str, Tensor] = {}
        if environment is not None:
            self.check_unread(environment)
        verdicts = None
        if all(row.get("answer") is not None for row in rows):
            # One call: normalization in-process, math-verify spread over the time-limited pool.
            answers = [str(r["answer"]) for r in rows]
            verdicts = torch.tensor(grade_many(texts, answers, timeout_s=self.math_timeout))
        total = torch.zeros(len(texts), dtype=torch.float64)
        for label, spec, fn in zip(self.labels, self.specs, self.functions, strict=True):
            if fn is math_reward:
                if verdicts is None:
                    self.check_rows(rows, "online data")  # raises, naming a row without answer
                assert verdicts is not None
                values = verdicts.to(torch.float64)
            elif fn is None:
                values = torch.tensor(environment_values(environment, len(texts)))
            elif isinstance(fn, LearnedReward):
                prompts = [row.get("prompt", "") for row in rows]
                scored, placed = fn.score(prompts, texts, self.allow_nonfinite)
                values = torch.tensor(scored, dtype=torch.float64)
                for mine, pairs in zip(steps, placed or [], strict=False):
                    mine.append([(end, spec.weight * value) for end, value in pairs])
            else:
                # Any form (alignlib, TRL's batched, verl's compute_score; async concurrently).
                scored = score_batch(
                    fn,
                    spec.name,
                    texts,
                    rows,
                    spec.params,
                    num_tokens,
                    form=spec.form,
                    token_ids=token_ids,
                    allow_nonfinite=self.allow_nonfinite,
                    environments=environments,
                )
                values = torch.tensor(scored, dtype=torch.float64)
            parts[label] = values
            total += spec.weight * values
        correct = verdicts if verdicts is not None else total > self.threshold
        return Scores(total, correct, parts, steps)

    def check_unread(self, environment: Sequence[float | None]) -> None:
        """An environment's reward that no listed reward reads is refused (a get_reward class
        is refused before the run; a step's turn rewards show only in its episodes)."""
        if any(v is not None for v in environment) and not any(
            s.name == ENVIRONMENT for s in self.specs
        ):
            raise RewardError(
                "online.rewards: the environment gave its episodes rewards (turn rewards: step "
                "returned (observation, reward)), which no reward reads; add "
                "{name: environment} to online.rewards (weight 0 to ignore them)"
            )


def environment_values(rewards: Sequence[float | None] | None, count: int) -> list[float]:
    """The episodes' environment rewards as floats; one line when an episode has none."""
    values = list(rewards) if rewards is not None else [None] * count
    for index, value in enumerate(values):
        if value is None or not torch.isfinite(torch.tensor(float(value))):
            raise RewardError(
                f"reward 'environment': completion {index} has no finite environment reward "
                f"({value!r}); its environment must define get_reward() returning a finite "
                "number, or give turn rewards (step returning (observation, reward)) "
                "(demonstrations have none: do not combine it with HPT/LUFFY routing)"
            )
    return [float(v) for v in values]  # type: ignore[arg-type]
