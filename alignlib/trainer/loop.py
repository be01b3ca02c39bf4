"""The trainer: ``alignlib.Trainer(config).train()`` / ``alignlib train run.yaml``.

One loop for every kind of run. A *source* (offline data, online rollouts, preference iterations)
hands the loop each step's mini-batches; the loop updates, logs, evaluates and checkpoints:

    start ← restore(state)                       # the newest checkpoint of this run, if resuming
    for step in start+1 .. total:
        for batch in source.batches(step):       # 1 offline; k mini-batches of whole groups online
            update(state, batch)                 # prepare → micro-batch backward → clip → step
            state.after_update()                 # a moving reference (TR-DPO) follows when due
        metrics ← source.finish_step(...)        # online: weights → engine
        metrics |= source.evaluate(step); log; checkpoint when due
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from alignlib.config.estimator import build_estimator
from alignlib.config.schema import DataConfig, RunConfig
from alignlib.console import notice, quiet_library_bars
from alignlib.data import Example
from alignlib.device import Placement
from alignlib.estimator import UnifiedEstimator
from alignlib.trainer.checkpoint import seed_everything
from alignlib.trainer.logs import RunLogger, plot_run
from alignlib.trainer.memory import check_fits
from alignlib.trainer.model import apply_lora, load_policy
from alignlib.trainer.preflight import check_run
from alignlib.trainer.run_dir import prepare_output_dir
from alignlib.trainer.state import Position, TrainState
from alignlib.trainer.step import LogprobKernel
from alignlib.trainer.update import MiniBatch, UpdateResult, update
from alignlib.trainer.world import SINGLE, World


class Source(Protocol):
    """What the loop needs from offline data, online rollouts or preference iterations."""

    position: Position
    """Where the source is in its data; saved in every checkpoint."""
    total_steps: int
    optimizer_steps: int
    """Length of the learning-rate schedule (k per step online)."""
    kernel: LogprobKernel
    """The policy's micro-batch kernel (online: at the sampling temperature)."""

    def prepare(self, state: TrainState) -> None:
        """Before a resume loads trained weights: whatever must see the initial policy."""

    def begin(self, out_dir: Path, start: int) -> dict[str, float]:
        """After the resume: engines; returns step-0 metrics to log (or nothing)."""

    def batches(self, step: int) -> Iterator[MiniBatch]:
        """The step's mini-batches, each built when the loop asks for it."""

    def finish_step(
        self, step: int, results: list[UpdateResult], seconds: float
    ) -> dict[str, float]:
        """After the step's updates: the step's metrics (and weights → engine online)."""

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out / benchmark scores when due at ``step``, else nothing."""

    def checkpoint_due(self, step: int) -> bool: ...

    def close(self) -> None: ...


@dataclass
class TrainResult:
    steps: int
    final_metrics: dict[str, float]
    output_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)


def run(state: TrainState, source: Source, out_dir: Path) -> TrainResult:
    """Train ``state`` on ``source`` into ``out_dir``: the one loop of every run."""
    config, world = state.config, state.world
    source.prepare(state)
    if world.is_main:  # an earlier run is moved aside, unless this run continues it
        prepare_output_dir(out_dir, continues(config.checkpoint.resume, out_dir))
    world.barrier()
    start = state.restore(out_dir, source.position) if config.checkpoint.resume else 0
    if start >= source.total_steps and world.is_main:  # a finished run's last checkpoint
        notice(
            f"nothing left to train: the checkpoint is at step {start} of {source.total_steps}; "
            "raise train.max_steps (or train.epochs) to continue the run"
        )
    logger = run_logger(state, out_dir, source.total_steps, start)
    history: list[dict[str, float]] = []
    seed = config.train.seed
    try:
        initial = source.begin(out_dir, start)
        if initial:  # the untrained policy's scores, for comparison
            logger.log(0, initial)
            history.append({"step": 0, **initial})
        state.model.train()
        for step in range(start + 1, source.total_steps + 1):
            began = time.perf_counter()
            lrs, results = [], []
            for batch in source.batches(step):
                # This step's rate, read once the source set the step up (a preference iteration
                # may start a fresh schedule); the scheduler then moves on.
                lrs.append(state.scheduler.get_last_lr()[0])
                results.append(
                    update(source.kernel, state.estimator, state.optimizer_step, batch, step, seed)
                )
                state.after_update()  # TR-DPO: π_ref moves toward the policy when due
            metrics = source.finish_step(step, results, time.perf_counter() - began)
            metrics |= {
                "lr": lrs[0] if lrs else state.scheduler.get_last_lr()[0],
                "time/step_s": time.perf_counter() - began,
            }
            metrics |= source.evaluate(step)
            logger.log(step, metrics)
            history.append({"step": step, **metrics})
            if source.checkpoint_due(step):
                state.save(out_dir, step, source.position)
    finally:
        source.close()
        logger.close()
    state.optimizer_step.check_trained(source.total_steps - start)
    state.save_final(out_dir)
    if config.logging.plot and world.is_main:
        plot_run(out_dir)
    final = history[-1] if history else {}
    return TrainResult(source.total_steps, final, out_dir, history)


def continues(resume: bool | str, out_dir: Path) -> bool:
    """Whether this run continues the one in ``out_dir`` (resume: true, or a checkpoint path
    inside it) rather than starting a new one there (from scratch or from another run's
    checkpoint)."""
    if isinstance(resume, str):
        return Path(resume).resolve().is_relative_to(out_dir.resolve())
    return bool(resume)


class SilentLogger:
    """What ranks other than 0 log into: nothing (rank 0 writes the run's files)."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Nothing."""

    def close(self) -> None:
        """Nothing."""


def run_logger(
    state: TrainState, out_dir: Path, total: int, start: int
) -> RunLogger | SilentLogger:
    """metrics.jsonl, TensorBoard, wandb and the progress bar: rank 0 only."""
    config = state.config
    if state.world.is_main:
        return RunLogger(out_dir, config.logging, total, start, config.model_dump())
    return SilentLogger()


def check_distributed(config: RunConfig) -> None:
    """What data-parallel workers cannot run yet, refused before any worker starts."""
    if config.distributed.strategy != "fsdp2":
        return
    if config.iterative is not None:
        raise ValueError(
            "distributed.strategy fsdp2: iterative: samples each iteration's responses with the "
            "policy itself, which a sharded policy cannot do; use distributed.strategy: ddp"
        )
    if config.rollout is None and config.eval is not None and config.eval.every:
        raise ValueError(
            "distributed.strategy fsdp2: in-loop eval (eval.every) of an offline run needs the "
            "whole model on one rank; evaluate the checkpoints afterwards (alignlib eval) or use "
            "distributed.strategy: ddp"
        )
    if config.rollout is not None and config.rollout.num_workers == 0:
        raise ValueError(
            "distributed.strategy fsdp2: a rollout engine cannot share a sharded policy; set "
            "rollout.num_workers: 1 or more (Ray rollout workers get the gathered weights) or "
            "use distributed.strategy: ddp"
        )


class Trainer:
    """Loads the policy once and trains it with the source its config describes."""

    def __init__(
        self, config: RunConfig | str | Path | dict[str, Any], world: World | None = None
    ) -> None:
        """``config``: a RunConfig, a YAML path (read with ``load_config``) or a dict of sections
        (validated like a YAML file's; relative paths are relative to the current folder;
        `online.rewards` may hold functions, as TRL's ``reward_funcs``).
        ``world``: set inside a data-parallel worker; without it a config with
        `distributed.num_workers` makes this the driver, which loads no model itself."""
        if isinstance(config, (str, Path)):
            from alignlib.config.loader import load_config

            config = load_config(config)
        elif isinstance(config, dict):
            from alignlib.config.loader import check_names, validate_sections
            from alignlib.rewards import named_rewards

            config = validate_sections(named_rewards(config), "config dict")
            check_names(config, "config dict")
        elif not isinstance(config, RunConfig):
            raise TypeError(
                "Trainer needs a RunConfig (alignlib.config.load_config(path)), a config path or "
                f"a dict; got {type(config).__name__}"
            )
        self.config = config
        if not config.logging.progress:
            quiet_library_bars()
        self.output_dir = Path(config.output_dir)
        self.world = world or SINGLE
        self.driver = world is None and config.distributed.num_workers > 0
        seed_everything(config.train.seed)
        self.placement = Placement.resolve(config.model.device, config.model.precision)
        self.estimator: UnifiedEstimator = build_estimator(config.algorithm)
        # Refuse a wrong objective, bad data or an unreachable cluster before the model loads.
        self.data_metrics: dict[str, float] = check_run(config, self.estimator)
        if self.driver:
            check_distributed(config)
            return
        head = "score" if self.estimator.scores_sequences() else "lm"  # a reward model
        base, self.tokenizer = load_policy(config.model, self.placement, head)
        self.model: nn.Module = apply_lora(base, config.lora) if config.lora.enabled else base
        check_fits(self.model, config.model.name_or_path, self.placement, self.world)
        self.shards: nn.Module | None = None
        if self.world.sharded:
            from alignlib.trainer.fsdp import shard

            self.shards = shard(self.model, self.world, self.placement)

    def source(self) -> Source:
        """Online rollouts with a `rollout:` section, preference iterations with `iterative:`,
        else the offline data set."""
        config = self.config
        if config.rollout is not None:
            from alignlib.trainer.online import OnlineSource

            return OnlineSource(config, self.tokenizer, self.estimator)
        if config.iterative is not None:
            from alignlib.trainer.iterative import IterativeSource

            return IterativeSource(config)
        from alignlib.trainer.examples import load_examples
        from alignlib.trainer.offline import OfflineSource
        from alignlib.trainer.offline_heldout import split_heldout

        scorer = self.estimator.scores_sequences()  # rows rendered as a scorer reads them
        kl_rows = self.estimator.needs_kl_rows()

        def load(data: DataConfig) -> tuple[list[Example], str]:
            chat = config.model.chat_template
            return load_examples(data, self.tokenizer, chat, scorer, kl_rows)

        examples, heldout = split_heldout(config, *load(config.data), load)
        source = OfflineSource(config, examples, heldout=heldout)
        source.extra_metrics = self.data_metrics
        return source

    def state(self, source: Source) -> TrainState:
        return TrainState.create(
            self.config,
            self.model,
            self.tokenizer,
            self.estimator,
            self.placement,
            source.optimizer_steps,
            self.world,
            self.shards,
        )

    def train(self) -> TrainResult:
        if self.driver:
            from alignlib.trainer.distributed import run_distributed

            done = run_distributed(self.config, train_rank)
            self.worker_nodes: list[str] = done["nodes"]  # the Ray node of each rank
            return TrainResult(
                done["steps"], done["final_metrics"], self.output_dir, done["history"]
            )
        source = self.source()
        return run(self.state(source), source, self.output_dir)


def train_rank(config: RunConfig, world: World) -> dict[str, Any]:
    """One data-parallel rank's training, in a Ray worker (distributed.py calls it)."""
    result = Trainer(config, world=world).train()
    return {"steps": result.steps, "final_metrics": result.final_metrics, "history": result.history}
