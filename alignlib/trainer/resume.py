"""Resume only into the run a checkpoint belongs to.

A checkpoint stores the run's config (as JSON, beside the tensors). On resume every key that
defines the model, the data or the objective must be unchanged, or the run is refused with one
line naming the keys: continuing a run under another objective silently mixes two runs. Keys
that may legitimately change between a crash and its resume (learning rate and schedule, step
budget, micro-batch and chunk sizes, logging, checkpointing, the rollout engine's plumbing) are
applied and announced in one line, never silently ignored.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from torch import nn

from alignlib.config.estimator import build_estimator
from alignlib.config.schema import AlgorithmConfig, OptimConfig, RunConfig
from alignlib.console import notice
from alignlib.trainer.checkpoint import (
    STATE_FORMAT,
    CheckpointError,
    apply_weights,
    load_checkpoint,
    load_newest,
    rng_state,
    set_rng_state,
)

# Keys (and the sections under them) that may change on resume; everything else is fixed, so
# a key added to the schema later is protected by default.
CHANGEABLE = (
    "output_dir",
    "optim",
    "train.max_steps",
    "train.epochs",
    "train.micro_batch_size",
    "train.logprob_chunk_size",
    "train.packing",
    "train.max_tokens_per_micro_batch",
    "train.nonfinite",
    "model.device",
    "model.attn_implementation",
    "model.compile",
    "model.gradient_checkpointing",
    "lora.save_merged",
    "checkpoint",
    "logging",
    "eval",
    "rollout.engine",
    "rollout.num_workers",
    "rollout.weight_transport",
    "rollout.max_batch_size",
    "rollout.ray_address",
    "rollout.worker_num_cpus",
    "rollout.worker_num_gpus",
    "rollout.timeout_s",
    "rollout.vllm",
    "online.micro_batch_size",
    "online.skip_grad_norm",
    "online.empty_cache",
    "online.heldout",
    # Any number of workers (the checkpoint is one full copy); not the strategy, whose
    # optimizer state is keyed differently (FSDP2: by parameter name).
    "distributed.num_workers",
    "distributed.use_gpu",
    "distributed.num_cpus_per_worker",
    "distributed.ray_address",
    "distributed.timeout_s",
)
SILENT = ("output_dir", "checkpoint.resume")  # expected to differ: not worth a line
SCHEDULE = ("optim", "train.max_steps", "train.epochs")  # changes that move the learning rate


def config_leaves(config: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Dotted key → JSON value for every field; free-form dicts and lists stay whole. A
    section is also a leaf ("set", or null when an optional one is absent), so switching a
    run between offline and online (`rollout: null` → a section) is a change too."""
    leaves: dict[str, Any] = {}
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            leaves[f"{prefix}{name}"] = "set"
            leaves |= config_leaves(value, f"{prefix}{name}.")
        else:
            leaves[f"{prefix}{name}"] = to_jsonable_python(value)
    return leaves


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(key: str, old: Any, new: Any) -> list[str]:
    """``key old → new``; for a dict (algorithm.params) one entry per changed sub-key."""
    if isinstance(old, dict) and isinstance(new, dict):
        missing = object()
        return [
            f"{key}.{sub} {_short(old.get(sub, 'unset'))} → {_short(new.get(sub, 'unset'))}"
            for sub in sorted(set(old) | set(new))
            if old.get(sub, missing) != new.get(sub, missing)
        ]
    return [f"{key} {_short(old)} → {_short(new)}"]


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(fixed keys that changed, changeable keys that changed), each as ``key old → new``.
    A key only one side knows (an option added or removed by another alignlib version) is
    not a change."""
    fixed: list[str] = []
    changeable: list[str] = []
    for key in sorted(set(saved) & set(current)):
        if saved[key] == current[key] or _under(key, SILENT):
            continue
        target = changeable if _under(key, CHANGEABLE) else fixed
        target.extend(_describe(key, saved[key], current[key]))
    return fixed, changeable


def checkpoint_state(
    config: RunConfig, step: int, optimizer, scheduler, sampler, estimator
) -> dict[str, Any]:
    """Everything a resume needs besides the weights: tensors and plain containers only."""
    return {
        "format": STATE_FORMAT,
        "step": step,
        "config": json.dumps(config_leaves(config), sort_keys=True),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict(),
        "rng": rng_state(),
        "estimator": estimator.state_dict(),
        "data_sha256": data_digest(config.data.path),
    }


def data_digest(path: str) -> str | None:
    """SHA-256 of a local data file (None for builtin and hub sets), so that a resume notices
    a file whose contents changed under the same path; computed once per file version."""
    file = Path(path)
    if not file.is_file():
        return None
    stat = file.stat()
    return _file_digest(str(file.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def check_data(path: Path, saved: str | None, config: RunConfig) -> None:
    """Refuse a checkpoint whose training data file has changed since it was written."""
    now = data_digest(config.data.path)
    if saved is not None and now is not None and saved != now:
        raise CheckpointError(
            f"checkpoint {path}: data.path {config.data.path} has changed since the checkpoint "
            "(its contents differ), so the run would continue on other data: restore the file, "
            "or set checkpoint.resume: false to start a new run (the earlier one is moved aside)"
        )


def apply_optim(optimizer, scheduler, optim: OptimConfig) -> None:
    """After loading the optimizer and scheduler state (which carry the old hyperparameters),
    put the configured ones in and recompute this step's learning rate from the new base lr
    and the current schedule."""
    for group in optimizer.param_groups:
        group["initial_lr"] = optim.lr
        group["betas"] = tuple(optim.betas)
        group["weight_decay"] = optim.weight_decay
    scheduler.base_lrs = [optim.lr for _ in optimizer.param_groups]
    lrs = [
        base * factor(scheduler.last_epoch)
        for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    ]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs


def same_preset_estimator(saved: dict[str, Any], algorithm: AlgorithmConfig) -> bool:
    """Whether the saved and current ``algorithm.params`` of one preset build the same
    estimator and router: a parameter spelled out at its default (beta: 0.1) is no change."""
    name = saved.get("algorithm.name")
    if name is None or name != algorithm.name:
        return False
    try:
        before = build_estimator(AlgorithmConfig(name=name, params=saved["algorithm.params"]))
    except Exception:  # an older version's parameter: then the params did change
        return False
    now = build_estimator(algorithm)
    return (repr(before), repr(before.router)) == (repr(now), repr(now.router))


def check_config(path: Path, saved_json: str, config: RunConfig) -> list[str]:
    """Refuse a checkpoint from another run; return the changes to apply and announce."""
    saved = json.loads(saved_json)
    fixed, changeable = config_changes(saved, config_leaves(config))
    if fixed and same_preset_estimator(saved, config.algorithm):
        fixed = [change for change in fixed if not change.startswith("algorithm.params.")]
    if fixed:
        raise CheckpointError(
            f"checkpoint {path} belongs to a run with another config: {'; '.join(fixed[:4])}"
            f"{' ...' if len(fixed) > 4 else ''}; these must not change on resume (they define "
            "the model, data or objective): restore them, or set checkpoint.resume: false to "
            "start a new run (the earlier one is moved aside)"
        )
    return changeable


def resume_from_checkpoint(
    out_dir: Path,
    config: RunConfig,
    model: nn.Module,
    optimizer,
    scheduler,
    sampler,
    estimator,
    shards: Any = None,
    beside: tuple[Any, ...] = (),
) -> int:
    """Load the newest loadable checkpoint of this run into everything; return its step
    (0 when there is none). ``shards``: the FSDP2 module, whose weights and optimizer state
    load from the full (unsharded) checkpoint through torch.distributed.checkpoint;
    ``beside``: what the checkpoint folder holds beside the policy (a critic, a moving
    reference: each ``load(folder, state)``; None when the run has none)."""
    chosen = config.checkpoint.resume
    loaded = load_checkpoint(Path(chosen)) if isinstance(chosen, str) else load_newest(out_dir)
    if loaded is None:
        return 0
    state = loaded.state
    changes = check_config(loaded.path, state["config"], config)
    check_data(loaded.path, state.get("data_sha256"), config)
    if shards is not None:
        from alignlib.trainer.fsdp import load_full_state

        load_full_state(shards, optimizer, loaded.weights, state["optimizer"])
    else:
        apply_weights(model, loaded)
        optimizer.load_state_dict(state["optimizer"])
    for part in beside:
        if part is not None:
            part.load(loaded.path, state)
    scheduler.load_state_dict(state["scheduler"])
    if any(_under(change.split(" ", 1)[0], SCHEDULE) for change in changes):
        apply_optim(optimizer, scheduler, config.optim)
    sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"])
    estimator.load_state_dict(state["estimator"])
    step = int(state["step"])
    applied = f"; applied the changed {', '.join(changes)}" if changes else ""
    notice(f"resuming from {loaded.path} (step {step}){applied}")
    return step
