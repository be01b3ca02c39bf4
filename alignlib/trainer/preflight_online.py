"""The online half of the run checks (``preflight.check_run``): the estimator, rewards, answer
and demonstration columns, group sizes, rollout correction and the Ray address, all before
the model loads."""

from __future__ import annotations

import inspect
import re
from typing import Any

from alignlib.config.environment import EnvironmentConfig
from alignlib.config.loader import ConfigError
from alignlib.config.online import OnlineConfig
from alignlib.config.schema import RunConfig
from alignlib.console import warn
from alignlib.data import DataError, load_rows
from alignlib.data.formats import check_value_types
from alignlib.estimator import Role, RolloutCorrection, Router, UnifiedEstimator, rollout_correction
from alignlib.estimator.registry import ParameterError

PROMPT_NAMES = ("question", "problem", "query", "instruction", "input")
"""Columns other data sets keep their prompt in (a missing `prompt` beside one of them names
data.prompt_field)."""


def check_prompts(rows: list[dict[str, Any]], source: str, field: str = "prompt") -> None:
    """Every row needs a prompt that is text (a number fails deep inside the tokenizer)."""
    for index, row in enumerate(rows, start=1):
        if row.get(field) in (None, "", []):
            named = [k for k in PROMPT_NAMES if k in row] if field == "prompt" else []
            hint = f"; data.prompt_field: {named[0]} reads it from there" if named else ""
            raise DataError(
                f"{source} row {index}: field '{field}' is missing or empty (online rows are "
                f"{{prompt, answer[, solution]}}; this row has {', '.join(sorted(row))}{hint})"
            )
        check_value_types({"prompt": row.get(field)}, f"{source} row {index}", ("prompt",))


def check_online(config: RunConfig, estimator: UnifiedEstimator) -> None:
    """The estimator (with its rollout correction), rewards (names, parameters, columns on every
    row), the answer and demonstration columns, held-out rows and the Ray address."""
    from alignlib.algorithms import router_for
    from alignlib.trainer.online_rewards import RewardModel, online_rows
    from alignlib.trainer.online_update import check_online_estimator

    assert config.rollout is not None
    online, source, data = config.online, config.data.path, config.data
    if config.train.reference != "precompute":
        raise ConfigError(
            f"train.reference: {config.train.reference} is not read by online runs (their "
            "reference is model.reference_name_or_path, else the initial policy: a frozen copy, "
            "or the model with its LoRA adapter off); remove train.reference"
        )
    correction = check_rollout_correction(config, estimator)
    check_online_estimator(estimator.with_rollout_correction(correction), config.algorithm.name)
    rows = load_rows(source, data.split, data.limit)
    check_prompts(rows, source, data.prompt_field)
    check_answer_field(rows, source, data.answer_field)
    rows = online_rows(rows, data, source)
    environment_rewards = check_environments(config, rows, source)
    RewardModel(
        online.rewards,
        online.correct_threshold,
        environment_rewards=environment_rewards,
        episodes=bool(online.episode_sections()),
    ).check_rows(rows, source)
    try:
        router = router_for(estimator, online)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if config.rollout.n < router.min_samples:
        raise ConfigError(
            f"rollout.n: {type(router).__name__} (the routing of algorithm "
            f"{config.algorithm.name or '(components)'}) needs at least {router.min_samples} "
            f"rollouts per prompt, got {config.rollout.n}"
        )
    if router.scores_demonstrations and environment_rewards:
        raise ConfigError(
            "online.rewards: environment rewards episodes, but this algorithm's routing also "
            "scores demonstrations, which no environment played; use other rewards"
        )
    check_group_size(config, estimator, router)
    check_demonstrations_trained(config, estimator, router)
    if router.needs_demonstrations:
        check_demonstrations(rows, source, online.demonstration_field, data.answer_field)
    if online.heldout.data is not None:
        check_heldout(config, online.heldout.data)
    check_prompt_count(config, len(rows), source)  # after the errors: a warning, mostly
    check_offline_sizes(config)
    rollout = config.rollout
    if rollout.num_workers > 0 and rollout.ray_address is not None:
        from alignlib.rollout.ray_cluster import probe_ray_address

        probe_ray_address(rollout.ray_address, rollout.timeout_s)


def check_offline_sizes(config: RunConfig) -> None:
    """train.batch_size / micro_batch_size set in an online run (where TRL's
    per_device_train_batch_size would go) size nothing: a warning naming the keys that do."""
    ignored = sorted({"batch_size", "micro_batch_size"} & config.train.model_fields_set)
    if ignored:
        warn(
            f"{' and '.join('train.' + k for k in ignored)}: not read by online runs (a step is "
            "online.prompts_per_step prompts × rollout.n completions, in online.mini_batches "
            "optimizer steps, forward passes of online.micro_batch_size rows); set those instead"
        )


def check_heldout(config: RunConfig, source: str) -> None:
    """Held-out rows: a prompt, an answer to grade against, and (with several environments)
    the environment each plays."""
    from alignlib.trainer.online_rewards import online_rows

    online, answer_field = config.online, config.data.answer_field
    rows = load_rows(source, "train", online.heldout.size)
    check_prompts(rows, source, config.data.prompt_field)
    rows = online_rows(rows, config.data, source)
    for index, row in enumerate(rows, start=1):
        if row.get("answer") is None:
            raise DataError(
                f"{source} row {index}: held-out rows need an '{answer_field}' (it would be "
                "graded against the string 'None')"
            )
    check_rows_environments(rows, online, source)


def check_rows_environments(rows: list[dict[str, Any]], online: OnlineConfig, source: str) -> None:
    """With several environments, every row names one of them (one line naming the row)."""
    from alignlib.rollout.episode_router import check_rows_name_environments

    if not online.environments:
        return
    names, field = list(online.environments), online.environment_field
    try:
        check_rows_name_environments(rows, names, field, source)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def check_environments(config: RunConfig, rows: list[dict[str, Any]], source: str) -> bool:
    """``online.environment`` (or each of ``online.environments``, and every row's choice of
    one): the class resolves and takes its params, and an environment's get_reward is used
    exactly when `rewards` lists `environment`. Returns whether episodes carry an environment's
    reward (get_reward, or turn rewards: those show only when the episodes run)."""
    from alignlib.trainer.online_rewards import ENVIRONMENT

    online = config.online
    sections = online.episode_sections()
    rewarding = [(key, s.name) for key, s in sections.items() if environment_rewards(s, key)]
    if rewarding and not any(r.name == ENVIRONMENT for r in online.rewards):
        key, name = rewarding[0]
        raise ConfigError(
            f"{key}: {name} defines get_reward(), which no reward reads; add "
            "{name: environment} to online.rewards (weight 0 to ignore it)"
        )
    check_rows_environments(rows, online, source)
    listed = any(r.name == ENVIRONMENT for r in online.rewards)
    return bool(sections) and listed


def environment_rewards(spec: EnvironmentConfig, key: str) -> bool:
    """The section's class resolves and takes its params; whether it defines get_reward."""
    from alignlib.rollout.environments import gives_rewards, resolve_environment

    try:
        factory = resolve_environment(spec.name, f"{key}.name")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        inspect.signature(factory).bind(**spec.params)
    except TypeError as exc:
        raise ConfigError(
            f"{key}.params: {spec.name} does not take {sorted(spec.params)} ({exc})"
        ) from None
    except ValueError:  # a builtin without a signature: nothing to check
        pass
    return gives_rewards(factory)


def check_prompt_count(config: RunConfig, count: int, source: str) -> None:
    """Fewer prompts than `online.prompts_per_step`: the sampler ends its pass over the data at
    the end of the data, so a step holds each prompt once, ``count`` of them (with dynamic
    sampling, further rounds pass over them again). Legal, so a warning; but with fewer prompts
    than mini-batches a step takes fewer optimizer steps than the schedule was sized for."""
    online = config.online
    wanted = online.prompts_per_step
    if count >= wanted:
        return
    if online.mini_batches > count and not online.dynamic_sampling.enabled:
        raise ConfigError(
            f"online.mini_batches ({online.mini_batches}) is more than the {count} prompts in "
            f"data.path {source}: each mini-batch holds the rollouts of whole prompts; lower "
            f"online.mini_batches to {count} or add prompts"
        )
    if online.dynamic_sampling.enabled:
        what = (
            f"dynamic sampling fills each step with further rounds over the same {count}, so "
            "a step can hold a prompt more than once"
        )
    else:
        what = f"each step takes those {count} once (steps of {count} prompts, not {wanted})"
    warn(
        f"online.prompts_per_step ({wanted}) is more than the {count} prompts in data.path "
        f"{source}: {what}; lower online.prompts_per_step to {count} or add prompts"
    )


def check_group_size(config: RunConfig, estimator: UnifiedEstimator, router: Router) -> None:
    """A group-relative advantage (GRPO's, RLOO's) of a one-row group is 0: with fewer rollouts
    per prompt than it needs, nothing would train. Routers that mix in demonstrations set
    their own minimum (``min_samples``): HPT's shut gate (γ ≥ n) trains SFT on one rollout."""
    assert config.rollout is not None
    if router.needs_demonstrations:
        return
    rows = config.rollout.n
    for term in estimator.terms:
        advantage = getattr(term, "advantage", None)
        if advantage is not None and rows < advantage.min_group_rows():
            raise ConfigError(
                f"rollout.n: algorithm {config.algorithm.name or '(components)'} compares the "
                f"rollouts of a prompt ({type(advantage).__name__}), so with n = "
                f"{config.rollout.n} every advantage is 0 and nothing trains; set rollout.n to "
                f"{advantage.min_group_rows()} or more"
            )


def check_rollout_correction(
    config: RunConfig, estimator: UnifiedEstimator
) -> RolloutCorrection | None:
    """``online.rollout_correction`` built as the run will build it; a token mode on a term
    whose likelihood has one unit per sequence is refused here rather than at the first step."""
    spec = config.online.rollout_correction
    if spec is None:
        return None
    try:
        correction = rollout_correction(spec.model_dump())
    except ParameterError as exc:
        raise ConfigError(f"online.rollout_correction.{exc.param}: {exc.detail}") from None
    assert correction is not None
    try:
        corrected = estimator.with_rollout_correction(correction)
    except ValueError as exc:  # a method that folds the engine's ratio in itself (VESPO)
        raise ConfigError(f"online.rollout_correction: {exc}") from None
    for term in corrected.terms:
        likelihood = getattr(term, "likelihood", None)
        per_sequence = getattr(likelihood, "per_sequence", False)
        if getattr(term, "correction", None) and per_sequence and not correction.per_sequence:
            raise ConfigError(
                f"online.rollout_correction.mode: {correction.mode} weighs tokens, but algorithm "
                f"{config.algorithm.name or '(components)'} has one unit per sequence; use "
                "sequence_truncate, sequence_mask or geometric_mask"
            )
    return correction


def check_answer_field(rows: list[dict[str, Any]], source: str, field: str) -> None:
    """A renamed answer column must exist: a missing one would be graded as 'None'."""
    if field == "answer":
        return
    for index, row in enumerate(rows, start=1):
        if row.get(field) is None:
            raise DataError(
                f"{source} row {index}: data.answer_field '{field}' is missing or null (the "
                f"row has {', '.join(sorted(row))})"
            )


_NUMBER = re.compile(r"[-+]?(\d[\d,]*(\.\d+)?|\.\d+)(/\d+)?")
_BOXED = re.compile(r"\\boxed\{(.*)\}")


def bare_core(text: str) -> str:
    """A final-answer string reduced to its core: a trailing period, ``$`` signs and one
    ``\\boxed{}`` wrapper removed, and no whitespace at all."""
    core = text.strip().rstrip(".").strip().strip("$")
    boxed = _BOXED.fullmatch(core.strip())
    return re.sub(r"\s+", "", boxed.group(1) if boxed else core)


def bare_answer(demonstration: str, answer: Any) -> str | None:
    """Why ``demonstration`` is only a final answer, or None when it is more (a worked
    solution). The rule: reduced by :func:`bare_core`, it equals the row's answer (reduced the
    same way), or, when the row has no answer, it is a number."""
    core = bare_core(demonstration)
    if answer is not None and core == bare_core(str(answer)):
        return "equals its answer"
    if answer is None and _NUMBER.fullmatch(core):
        return "is a bare number"
    return None


def check_demonstrations(
    rows: list[dict[str, Any]], source: str, field: str, answer_field: str
) -> None:
    """Every row needs a demonstration; a column of bare answers (TRL's `solution`) is refused:
    HPT's SFT rows and LUFFY's off-policy rows would train on the answer alone."""
    if field == answer_field:
        raise ConfigError(
            f"online.demonstration_field and data.answer_field are both '{field}': the "
            "demonstrations would be the bare answers; point online.demonstration_field at a "
            "column of worked solutions"
        )
    reasons = []
    for index, row in enumerate(rows, start=1):
        if not isinstance(row.get(field), str) or not row[field]:
            raise DataError(
                f"{source} row {index}: online.routing needs a demonstration (a non-empty "
                f"string) in field '{field}' of every row; set online.demonstration_field "
                "or fill the field"
            )
        reasons.append(bare_answer(row[field], row.get("answer")))
    if all(reasons):
        raise DataError(
            f"{source}: online.demonstration_field '{field}' holds bare answers, not worked "
            f"solutions (every row's '{field}' {reasons[0]}, e.g. row 1: {rows[0][field]!r:.40}); "
            "point online.demonstration_field at a column of full solutions"
        )
    bare = [i for i, why in enumerate(reasons, start=1) if why]
    if bare:
        warn(
            f"{source}: {len(bare)} of {len(rows)} demonstrations in '{field}' are bare answers "
            f"(rows {', '.join(map(str, bare[:5]))}{', ...' if len(bare) > 5 else ''})"
        )


def check_demonstrations_trained(
    config: RunConfig, estimator: UnifiedEstimator, router: Router
) -> None:
    """A router that makes demonstration rows (Role.DEMO) needs a term that trains them: HPT's
    gate puts each SFT row alone in its group with reward 0, so a term that selects every row
    (GRPO's) gives it advantage 0; LUFFY's scored demonstrations share their group."""
    if not router.needs_demonstrations:
        return
    for term in estimator.terms:
        roles = getattr(getattr(term, "rows", None), "roles", None)
        if (roles is None and router.scores_demonstrations) or (roles and Role.DEMO in roles):
            return
    name = config.algorithm.name or "(components)"
    raise ConfigError(
        f"online.routing: {config.online.routing} makes SFT rows from demonstrations, but "
        f"algorithm {name} has no term that trains them; use algorithm hpt (or luffy), or "
        "online.routing: auto"
    )
