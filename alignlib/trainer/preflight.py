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

from typing import Any

from alignlib.config.loader import ConfigError
from alignlib.config.schema import RunConfig
from alignlib.console import warn
from alignlib.data import DataError, infer_format, load_rows
from alignlib.data.collate import SEQUENCE_FIELDS
from alignlib.data.formats import check_rows, check_value_types, identical_pairs
from alignlib.estimator import UnifiedEstimator

OFFLINE_FIELDS = {"logprobs", "mask", "ref_logprobs", "entropy", "roles", "pair_ids", "trace"}
"""Batch fields an offline step fills (prev_logprobs only inside INPO's iterations)."""


def check_run(config: RunConfig, estimator: UnifiedEstimator) -> dict[str, float]:
    """Refuse what would train the wrong objective, hang, or fail after the model loads.

    Returns metrics about the data for the loop to log (``data/identical_pairs``)."""
    if config.rollout is not None:
        check_online(config, estimator)
        return {}
    if config.inpo is not None:
        check_inpo(config)
        return {}
    check_offline_estimator(config, estimator)
    return check_offline_data(config, estimator)


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
    fmt = infer_format(rows[0]) if data.format == "auto" else data.format
    if fmt not in SEQUENCE_FIELDS:
        raise DataError(
            f"{data.path}: format '{fmt}' has prompts but no completions to train on offline; "
            "add a rollout: section for online RL, or give {prompt, completion} rows"
        )
    check_rows(rows, fmt, data.path)
    selects_trace = any(
        getattr(getattr(t, "rows", None), "trace", None) is not None for t in estimator.terms
    )
    if selects_trace and fmt != "bvpo":
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
    """The estimator, rewards (names, parameters, columns on every row), demonstrations,
    held-out rows and the Ray address of an online run."""
    from alignlib.trainer.online_rollout import RewardModel, resolve_routing
    from alignlib.trainer.online_update import check_online_estimator

    assert config.rollout is not None
    online, source = config.online, config.data.path
    check_online_estimator(estimator, config.algorithm.name)
    rows = load_rows(source, config.data.split, config.data.limit)
    check_prompts(rows, source)
    RewardModel(online.rewards, online.correct_threshold).check_rows(rows, source)
    if resolve_routing(online, config.algorithm.name) != "none":
        field = online.demonstration_field
        for index, row in enumerate(rows, start=1):
            if not isinstance(row.get(field), str) or not row[field]:
                raise DataError(
                    f"{source} row {index}: online.routing needs a demonstration (a non-empty "
                    f"string) in field '{field}' of every row; set online.demonstration_field "
                    "or fill the field"
                )
    if online.heldout.data is not None:
        heldout = load_rows(online.heldout.data, "train", online.heldout.size)
        check_prompts(heldout, online.heldout.data)
        for index, row in enumerate(heldout, start=1):
            if row.get("answer") is None:
                raise DataError(
                    f"{online.heldout.data} row {index}: held-out rows need an 'answer' (it "
                    "would be graded against the string 'None')"
                )
    rollout = config.rollout
    if rollout.num_workers > 0 and rollout.ray_address is not None:
        from alignlib.rollout.ray_workers import probe_ray_address

        probe_ray_address(rollout.ray_address, rollout.timeout_s)


def check_inpo(config: RunConfig) -> None:
    """INPO's prompts and its oracle: a known reward whose columns every row holds."""
    from alignlib.rewards import missing_columns, resolve_reward

    assert config.inpo is not None
    source = config.data.path
    rows = load_rows(source, config.data.split, config.data.limit)
    check_prompts(rows, source)
    oracle = config.inpo.oracle
    if oracle.startswith("reward_model:"):
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
