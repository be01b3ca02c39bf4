"""Online RL stages before the update: prompts → rollouts → rewards → routing → filtering.

Each stage is a plain function; ``run_online`` calls them top to bottom. Rows are built from
token ids (never re-tokenized text), so the trained tokens are exactly the sampled ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from alignlib.config.online import OnlineConfig, RewardSpec, RolloutConfig
from alignlib.estimator import Role, RowPlan
from alignlib.rewards import (
    RewardError,
    check_params,
    grade_many,
    math_reward,
    missing_columns,
    resolve_reward,
    score_batch,
)
from alignlib.rollout.base import Generation, RolloutEngine, SamplingParams


@dataclass
class Rollouts:
    """P prompts × n completions, scored."""

    rows: list[dict[str, Any]]
    """The data rows of the P prompts."""
    prompt_ids: list[list[int]]
    generations: list[list[Generation]]
    rewards: Tensor
    """[P, n] total reward of each completion."""
    correct: Tensor
    """[P, n] bool: correct per the math grader (rows with `answer`), else reward > threshold."""
    seconds: float = 0.0
    """Wall time of generation alone."""

    @property
    def num_tokens(self) -> int:
        return sum(len(g.token_ids) for gens in self.generations for g in gens)


@dataclass
class TrainRows:
    """The rows one step trains on: prompt + completion token ids, with roles and groups."""

    sequences: list[list[int]] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    """Position of each row's first completion token."""
    roles: list[int] = field(default_factory=list)
    group_ids: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    behaviour: list[list[float] | None] = field(default_factory=list)
    """The engine's log-prob of each completion token (``Generation.logprobs``: the processed
    distribution it sampled from); None for rows the engine did not sample (demonstrations)."""

    def add(
        self,
        prompt: list[int],
        completion: list[int],
        role: Role,
        group: int,
        reward: float,
        logprobs: list[float] | None = None,
    ) -> None:
        self.sequences.append(list(prompt) + list(completion))
        self.starts.append(len(prompt))
        self.roles.append(int(role))
        self.group_ids.append(group)
        self.rewards.append(float(reward))
        self.behaviour.append(None if logprobs is None else list(logprobs))

    def extend(self, other: TrainRows, group_offset: int) -> None:
        self.sequences += other.sequences
        self.starts += other.starts
        self.roles += other.roles
        self.group_ids += [g + group_offset for g in other.group_ids]
        self.rewards += other.rewards
        self.behaviour += other.behaviour

    def __len__(self) -> int:
        return len(self.sequences)


# ------------------------------------------------------------------------------------- rollout
def sampling_params(config: RolloutConfig, seed: int) -> SamplingParams:
    return SamplingParams(
        n=config.n,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        seed=seed,
    )


def generate(
    engine: RolloutEngine, prompt_ids: list[list[int]], sampling: SamplingParams
) -> tuple[list[list[Generation]], float]:
    """n completions per prompt and the wall time they took."""
    began = time.perf_counter()
    generations = engine.generate(prompt_ids, sampling)
    return generations, time.perf_counter() - began


# ------------------------------------------------------------------------------------- rewards
def with_answer_field(rows: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
    """Rows whose `answer` is the `data.answer_field` column (TRL calls it `solution`): the
    math grader and every reward read the gold answer as `answer`; the column keeps its name."""
    if field == "answer":
        return rows
    return [{**row, "answer": row.get(field)} for row in rows]


MATH_PARAMS = ("timeout_s",)
"""What `{name: math, params: ...}` may set: math is graded in one batch, not called per row."""


class RewardModel:
    """The weighted sum of the configured reward functions; `math` is graded in one batch.

    Parameters are checked against each function's signature when this is built, so a
    misspelled one is refused instead of swallowed; every value must be a finite number unless
    ``allow_nonfinite`` (`train.nonfinite: skip`)."""

    def __init__(
        self, specs: Sequence[RewardSpec], threshold: float, allow_nonfinite: bool = False
    ) -> None:
        self.specs = list(specs)
        self.threshold = threshold
        self.allow_nonfinite = allow_nonfinite
        self.functions: list[Callable[..., float] | None] = []
        for index, spec in enumerate(self.specs):
            try:
                fn = None if spec.name == "math" else resolve_reward(spec.name)
            except (TypeError, ValueError) as exc:
                raise RewardError(f"online.rewards[{index}].name: {exc}") from None
            valid = MATH_PARAMS if fn is None else None
            where = f"online.rewards[{index}].params"
            check_params(spec.name, fn or math_reward, spec.params, where, valid)
            self.functions.append(fn)
        math_params = [s.params for s in self.specs if s.name == "math"]
        self.math_timeout = float(math_params[0].get("timeout_s", 5.0)) if math_params else 5.0

    def check(self, row: dict[str, Any], where: str) -> None:
        """``row`` must hold every column a reward needs (math: a non-null `answer`)."""
        for spec, fn in zip(self.specs, self.functions, strict=True):
            missing = missing_columns(fn or math_reward, spec.params, row)
            if missing:
                raise RewardError(
                    f"{where}: reward {spec.name!r} needs field {missing[0]!r}, which this row "
                    f"lacks or leaves null (the row has {', '.join(sorted(row))}); fill it in, "
                    "drop the row, or use rewards that do not need it"
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
    ) -> tuple[Tensor, Tensor]:
        """([N] rewards, [N] correct) for N completions, ``rows[i]`` the data row of text i
        (``token_ids``: the completions' tokens, for TRL rewards that read completion_ids)."""
        has_answer = all(row.get("answer") is not None for row in rows)
        verdicts = None
        if has_answer:
            # One call: normalization in-process, math-verify spread over the time-limited pool.
            answers = [str(r["answer"]) for r in rows]
            verdicts = torch.tensor(grade_many(texts, answers, timeout_s=self.math_timeout))
        total = torch.zeros(len(texts), dtype=torch.float64)
        for spec, fn in zip(self.specs, self.functions, strict=True):
            if fn is None:
                if verdicts is None:
                    self.check_rows(rows, "online data")  # raises, naming a row without answer
                assert verdicts is not None
                values = verdicts.to(torch.float64)
            else:
                # Any form (alignlib, TRL's batched, verl's compute_score; async concurrently).
                values = torch.tensor(
                    score_batch(
                        fn,
                        spec.name,
                        texts,
                        rows,
                        spec.params,
                        num_tokens,
                        form=spec.form,
                        token_ids=token_ids,
                        allow_nonfinite=self.allow_nonfinite,
                    ),
                    dtype=torch.float64,
                )
            total += spec.weight * values
        correct = verdicts if verdicts is not None else total > self.threshold
        return total, correct


def score_rollouts(
    rewards: RewardModel,
    rows: list[dict[str, Any]],
    prompt_ids: list[list[int]],
    generations: list[list[Generation]],
    seconds: float,
) -> Rollouts:
    flat = [(p, g) for p, gens in enumerate(generations) for g in gens]
    total, correct = rewards.score(
        [g.text for _, g in flat],
        [len(g.token_ids) for _, g in flat],
        [rows[p] for p, _ in flat],
        [list(g.token_ids) for _, g in flat],
    )
    shape = (len(generations), len(generations[0]) if generations else 0)
    return Rollouts(rows, prompt_ids, generations, total.view(shape), correct.view(shape), seconds)


# ------------------------------------------------------------------------------------- routing
def demonstration_ids(
    tokenizer: Any, row: dict[str, Any], config: OnlineConfig, where: str
) -> list[int]:
    """The row's demonstration as completion tokens, EOS appended (the policy learns to stop)."""
    text = row.get(config.demonstration_field)
    if not isinstance(text, str) or not text:
        raise ValueError(
            f"{where}: online.routing needs a demonstration in field "
            f"'{config.demonstration_field}' of every row (set online.demonstration_field); "
            f"this row has {sorted(row)}"
        )
    ids = tokenizer.encode(text, add_special_tokens=False)[: config.max_demonstration_length - 1]
    return [*ids, tokenizer.eos_token_id]


def build_rows(
    rollouts: Rollouts, plan: RowPlan, demos: Callable[[dict[str, Any]], list[int]]
) -> TrainRows:
    """The rows the preset's router planned, in its order: rollout ``s`` of prompt ``p`` (its
    sampled token ids and engine log-probs), or the prompt's demonstration when ``s`` is −1."""
    out = TrainRows()
    rows = zip(plan.prompt_index.tolist(), plan.sample_index.tolist(), strict=True)
    for (p, s), role, reward in zip(rows, plan.roles.tolist(), plan.rewards.tolist(), strict=True):
        prompt = rollouts.prompt_ids[p]
        if s < 0:
            out.add(prompt, demos(rollouts.rows[p]), Role(role), p, reward)
        else:
            gen = rollouts.generations[p][s]
            out.add(prompt, gen.token_ids, Role(role), p, reward, gen.logprobs)
    return out


# ---------------------------------------------------------------------------- dynamic sampling
def informative_groups(rows: TrainRows, always: Collection[int] = ()) -> list[int]:
    """Group ids that can carry gradient: those the router keeps whatever their rewards
    (``RowPlan.keep``: HPT's SFT rows), or rewards that are not all equal.

    A group whose policy-gradient rows all share one reward has zero advantage under every
    group baseline, so DAPO's dynamic sampling drops it and samples more prompts instead.
    """
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(rows.group_ids):
        by_group.setdefault(g, []).append(i)
    return [
        g
        for g, members in by_group.items()
        if g in always or len({rows.rewards[i] for i in members}) > 1
    ]


def select_groups(rows: TrainRows, groups: list[int]) -> TrainRows:
    """The rows of ``groups``, renumbered 0..len(groups)−1 in that order."""
    out = TrainRows()
    for new, g in enumerate(groups):
        for i, gid in enumerate(rows.group_ids):
            if gid == g:
                out.add(
                    rows.sequences[i][: rows.starts[i]],
                    rows.sequences[i][rows.starts[i] :],
                    Role(rows.roles[i]),
                    new,
                    rows.rewards[i],
                    rows.behaviour[i],
                )
    return out


def rollout_metrics(rollouts: list[Rollouts], plans: list[RowPlan]) -> dict[str, float]:
    """The step's rollout statistics, and the router's own per-prompt metrics averaged over
    every prompt of the step (all rounds of dynamic sampling)."""
    rewards = torch.cat([r.rewards.flatten() for r in rollouts])
    correct = torch.cat([r.correct.flatten().float() for r in rollouts])
    lengths = [len(g.token_ids) for r in rollouts for gens in r.generations for g in gens]
    tokens = sum(r.num_tokens for r in rollouts)
    seconds = sum(r.seconds for r in rollouts)
    truncated = [
        g.finish_reason == "length" for r in rollouts for gens in r.generations for g in gens
    ]
    return {
        "rollout/reward_mean": float(rewards.mean()),
        "rollout/reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        "rollout/accuracy": float(correct.mean()),
        "rollout/response_length": sum(lengths) / max(1, len(lengths)),
        "rollout/truncated_frac": sum(truncated) / max(1, len(truncated)),
        "rollout/tokens_per_s": tokens / max(seconds, 1e-9),
        "time/rollout_s": seconds,
    } | router_metrics(plans)


def router_metrics(plans: list[RowPlan]) -> dict[str, float]:
    values: dict[str, list[Tensor]] = {}
    for plan in plans:
        for key, value in plan.metrics.items():
            values.setdefault(key, []).append(value.flatten().to(torch.float64))
    return {key: float(torch.cat(parts).mean()) for key, parts in values.items()}
