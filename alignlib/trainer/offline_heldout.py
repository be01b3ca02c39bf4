"""Held-out rows of an offline run (`data.heldout`): split off the training data or read from
their own file, given reference log-probs the way the training rows get them, and scored without
gradient by the run's own estimator — held-out loss, accuracy and margins for every offline
method, as TRL reports on an eval_dataset."""

from __future__ import annotations

from collections.abc import Callable

from alignlib.config.loader import ConfigError
from alignlib.config.schema import RunConfig
from alignlib.data import Example
from alignlib.estimator import UnifiedEstimator
from alignlib.trainer.step import LogprobKernel
from alignlib.trainer.update import MiniBatch, accumulate

Load = Callable[..., tuple[list[Example], str]]


def split_heldout(
    config: RunConfig, examples: list[Example], fmt: str, load: Load
) -> tuple[list[Example], list[Example]]:
    """(training examples, held-out examples). ``load(data_config)`` tokenizes another data
    source as the training rows were (the offline loader)."""
    heldout = config.data.heldout
    if heldout is None:
        return examples, []
    if heldout.path is None:
        assert heldout.size is not None
        if heldout.size >= len(examples):
            raise ConfigError(
                f"data.heldout.size ({heldout.size}) holds out every one of the {len(examples)} "
                f"rows of {config.data.path}; lower it, or give data.heldout.path"
            )
        return examples[: -heldout.size], examples[-heldout.size :]
    data = config.data.model_copy(
        update={"path": heldout.path, "split": heldout.split, "limit": heldout.size}
    )
    held, held_fmt = load(data)
    if held_fmt != fmt:
        raise ConfigError(
            f"data.heldout.path {heldout.path}: its rows are format '{held_fmt}', the training "
            f"rows '{fmt}'; give held-out rows of the training format"
        )
    return examples, held


def heldout_due(config: RunConfig, step: int, total_steps: int) -> bool:
    """Before training (step 0), every `every` steps, and at the end."""
    heldout = config.data.heldout
    if heldout is None:
        return False
    every = heldout.every
    return step in (0, total_steps) or bool(every and step % every == 0)


def heldout_metrics(
    kernel: LogprobKernel,
    estimator: UnifiedEstimator,
    batches: list[MiniBatch],
) -> dict[str, float]:
    """``heldout/<metric>``: the estimator's loss and metrics on each held-out mini-batch, no
    gradient, eval mode (no dropout), averaged over the mini-batches."""
    model = kernel.model
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    try:
        for batch in batches:
            metrics, _ = accumulate(kernel, estimator, batch, train=False)
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value
    finally:
        model.train(was_training)
    count = max(1, len(batches))
    return {f"heldout/{k}": v / count for k, v in totals.items() if k != "tokens"}
