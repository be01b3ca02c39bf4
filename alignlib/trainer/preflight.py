"""Everything a run can be refused for before the model loads, in one place.

``check_run(config, estimator)`` runs in ``Trainer.__init__`` between building the estimator and
loading the policy. It catches the runs that would otherwise exit 0 having trained the wrong
objective (DPO against all-zero reference log-probs, identical pairs, a string `trace`, an
answer graded against "None") or fail only after minutes of loading (a typo in a reward
parameter, a Ray address nothing listens on). Each refusal is one line naming the key, file or
row and the fix; legitimate but suspicious data (a few identical pairs) is a warning line and a
metric the loop logs.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from alignlib.config.loader import ConfigError
from alignlib.config.schema import RunConfig
from alignlib.console import warn
from alignlib.data import DataError, infer_format, load_rows
from alignlib.data.collate import SEQUENCE_FIELDS
from alignlib.data.fit import check_fit
from alignlib.data.formats import FORMAT_FIELDS, check_rows, check_value_types, identical_pairs
from alignlib.estimator import RolloutCorrection, Router, UnifiedEstimator, rollout_correction
from alignlib.estimator.registry import ParameterError
from alignlib.trainer.run_dir import check_output_dir

OFFLINE_FIELDS = {"logprobs", "mask", "ref_logprobs", "entropy", "roles", "pair_ids", "trace"}
"""Batch fields an offline step fills (prev_logprobs only inside INPO's iterations)."""


def check_run(config: RunConfig, estimator: UnifiedEstimator) -> dict[str, float]:
    """Refuse what would train the wrong objective, hang, or fail after the model loads.

    Returns metrics about the data for the loop to log (``data/identical_pairs``)."""
    check_output_dir(Path(config.output_dir))
    if config.rollout is None and config.online.rollout_correction is not None:
        raise ConfigError(
            "online.rollout_correction corrects rollouts by the engine's log-probs, and this run "
            "samples none (no rollout: section); remove the key, or add rollout: to train online"
        )
    check_machine(config)
    if config.rollout is not None:
        check_online(config, estimator)
        return {}
    if config.inpo is not None:
        check_inpo(config)
        return {}
    check_offline_estimator(config, estimator)
    return check_offline_data(config, estimator)


def check_machine(config: RunConfig) -> None:
    """A GPU asked of Ray with no CUDA device here and no cluster waits out the timeout; flash
    attention without its package fails with a traceback after the model loads."""
    flash = config.model.attn_implementation == "flash_attention_2"
    if flash and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(
            "model.attn_implementation: flash_attention_2 needs the flash-attn package (and a "
            "CUDA GPU); use sdpa"
        )
    import torch

    if torch.cuda.is_available():
        return
    dist, rollout = config.distributed, config.rollout
    if dist.num_workers > 0 and dist.use_gpu and dist.ray_address is None:
        raise ConfigError(
            "distributed.use_gpu: true but torch sees no CUDA device here; set it to false (or "
            "give distributed.ray_address of a cluster with GPUs)"
        )
    if rollout is None or rollout.num_workers == 0 or rollout.worker_num_gpus == 0:
        return
    if rollout.ray_address is None and dist.ray_address is None:
        raise ConfigError(
            f"rollout.worker_num_gpus: {rollout.worker_num_gpus:g} but torch sees no CUDA device "
            "here; set it to 0 (or give rollout.ray_address of a cluster with GPUs)"
        )


# --------------------------------------------------------------------------------- offline
def check_offline_estimator(config: RunConfig, estimator: UnifiedEstimator) -> None:
    """The estimator's batch fields must be ones an offline step computes for real: a missing
    reference is filled with zeros downstream, which trains a different loss without a word."""
    name = config.algorithm.name or "(components)"
    needs = estimator.requirements()
    online = sorted(k for k in needs if k not in OFFLINE_FIELDS | {"prev_logprobs"})
    if online:
        raise ConfigError(
            f"algorithm {name} is an online RL method (it needs batch.{online[0]}: "
            f"{needs[online[0]]}); add a rollout: section, or pick an offline method (sft, dpo, "
            "ipo, rpo, tpo, bvpo, ...)"
        )
    if "prev_logprobs" in needs:
        raise ConfigError(
            f"algorithm {name} needs the previous iterate's log-probs, which only INPO's "
            "iterations compute: add an inpo: section"
        )
    if "ref_logprobs" not in needs:
        return
    reference = config.train.reference
    if reference == "none":
        raise ConfigError(
            f"train.reference: none leaves algorithm {name} without reference log-probs "
            f"({needs['ref_logprobs']}); set train.reference: precompute (or adapter with "
            "lora.enabled: true), or use a reference-free method such as tpo or tpo_l"
        )
    if reference == "adapter" and not config.lora.enabled:
        raise ConfigError(
            "train.reference: adapter needs lora.enabled: true (the reference is the model with "
            "its LoRA adapter off); set lora.enabled: true or train.reference: precompute"
        )


def check_offline_data(config: RunConfig, estimator: UnifiedEstimator) -> dict[str, float]:
    """Rows of the right format and types; identical pairs refused (all) or counted (some)."""
    data = config.data
    rows = load_rows(data.path, data.split, data.limit)
    fmt = infer_format(rows[0], data.path) if data.format == "auto" else data.format
    if fmt not in SEQUENCE_FIELDS:
        raise DataError(
            f"{data.path}: format '{fmt}' has prompts but no completions to train on offline; "
            "add a rollout: section for online RL, or give {prompt, completion} rows"
        )
    check_rows(rows, fmt, data.path)
    check_fit(estimator.terms, fmt, rows[0], data.path, config.algorithm.name or "(components)")
    selects_trace = any(
        getattr(getattr(t, "rows", None), "trace", None) is not None for t in estimator.terms
    )
    if selects_trace and "trace" not in FORMAT_FIELDS.get(fmt, ()):
        raise DataError(
            f"{data.path}: algorithm {config.algorithm.name or '(components)'} splits pairs by "
            f"their boolean 'trace' field, but the rows are format '{fmt}'; add trace to every row"
        )
    same = identical_pairs(rows, fmt)
    if not same:
        return {}
    shown = ", ".join(str(i) for i in same[:5]) + (", ..." if len(same) > 5 else "")
    if len(same) == len(rows):
        raise DataError(
            f"{data.path}: every pair has chosen == rejected (all {len(rows)} rows); there is "
            "nothing to prefer: check that chosen and rejected come from different columns"
        )
    warn(
        f"{data.path}: {len(same)} of {len(rows)} pairs have chosen == rejected (rows {shown}); "
        "they carry no preference signal (logged as data/identical_pairs)"
    )
    return {"data/identical_pairs": float(len(same))}


# ---------------------------------------------------------------------------------- online
def check_prompts(rows: list[dict[str, Any]], source: str) -> None:
    """Every row needs a prompt that is text (a number fails deep inside the tokenizer)."""
    for index, row in enumerate(rows, start=1):
        if row.get("prompt") in (None, "", []):
            raise DataError(
                f"{source} row {index}: field 'prompt' is missing or empty (online rows are "
                f"{{prompt, answer[, solution]}}; this row has {', '.join(sorted(row))})"
            )
        check_value_types(row, f"{source} row {index}", ("prompt",))


def check_online(config: RunConfig, estimator: UnifiedEstimator) -> None:
    """The estimator (with its rollout correction), rewards (names, parameters, columns on every
    row), the answer and demonstration columns, held-out rows and the Ray address."""
    from alignlib.algorithms import router_for
    from alignlib.trainer.online_collect import check_demonstrations_trained
    from alignlib.trainer.online_rollout import RewardModel, with_answer_field
    from alignlib.trainer.online_update import check_online_estimator

    assert config.rollout is not None
    online, source, data = config.online, config.data.path, config.data
    if config.train.reference != "precompute":
        raise ConfigError(
            f"train.reference: {config.train.reference} is not read by online runs (their KL "
            "reference is always the initial policy: a frozen copy, or the model with its LoRA "
            "adapter off); remove train.reference"
        )
    correction = check_rollout_correction(config, estimator)
    check_online_estimator(estimator.with_rollout_correction(correction), config.algorithm.name)
    rows = load_rows(source, data.split, data.limit)
    check_prompts(rows, source)
    check_answer_field(rows, source, data.answer_field)
    rows = with_answer_field(rows, data.answer_field)
    RewardModel(online.rewards, online.correct_threshold).check_rows(rows, source)
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
    check_group_size(config, estimator, router)
    check_demonstrations_trained(config, estimator, router)
    if router.needs_demonstrations:
        check_demonstrations(rows, source, online.demonstration_field, data.answer_field)
    if online.heldout.data is not None:
        heldout = load_rows(online.heldout.data, "train", online.heldout.size)
        check_prompts(heldout, online.heldout.data)
        for index, row in enumerate(with_answer_field(heldout, data.answer_field), start=1):
            if row.get("answer") is None:
                raise DataError(
                    f"{online.heldout.data} row {index}: held-out rows need an "
                    f"'{data.answer_field}' (it would be graded against the string 'None')"
                )
    rollout = config.rollout
    if rollout.num_workers > 0 and rollout.ray_address is not None:
        from alignlib.rollout.ray_cluster import probe_ray_address

        probe_ray_address(rollout.ray_address, rollout.timeout_s)


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
    for term in estimator.with_rollout_correction(correction).terms:
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


def check_inpo(config: RunConfig) -> None:
    """INPO's prompts and its oracle: a known reward whose columns every row holds."""
    from alignlib.rewards import missing_columns, resolve_reward

    assert config.inpo is not None
    source = config.data.path
    rows = load_rows(source, config.data.split, config.data.limit)
    check_prompts(rows, source)
    oracle = config.inpo.oracle
    if oracle.startswith("reward_model:"):  # read its config.json before the policy loads
        from alignlib.trainer.sample_rank import check_reward_model_folder

        check_reward_model_folder(oracle.removeprefix("reward_model:"))
        return
    try:
        fn = resolve_reward(oracle)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"inpo.oracle: {exc}") from None
    for index, row in enumerate(rows, start=1):
        missing = missing_columns(fn, {}, row)
        if missing:
            raise DataError(
                f"{source} row {index}: inpo.oracle {oracle!r} needs field {missing[0]!r}, which "
                "this row lacks or leaves null"
            )
