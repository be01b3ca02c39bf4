"""The online source (every preset that reads rewards). One step, top to bottom: prompts ←
data; samples ← rollout.generate(prompts, n); rewards ← reward functions; rows ← the preset's
router (``UnifiedEstimator.router``: which rollouts and demonstrations become rows); optional
dynamic sampling (these first stages: ``online_collect.RolloutCollector``); old (and ref)
log-probs, and the engine's log-probs for a rollout correction; k mini-batches of whole groups
for the loop's update; then weights → engine and held-out accuracy / benchmarks when due.
Nothing here names a method."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from itertools import product
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from alignlib.algorithms import router_for
from alignlib.config.schema import RunConfig
from alignlib.estimator import Role, UnifiedEstimator, rollout_correction
from alignlib.trainer.ahead import AheadCollector, ConsumedPosition, generate_ahead
from alignlib.trainer.completions_log import FILE as COMPLETIONS
from alignlib.trainer.completions_log import CompletionLog
from alignlib.trainer.critic import train_critic
from alignlib.trainer.evaluation import in_loop_eval
from alignlib.trainer.offline import Sampler
from alignlib.trainer.online_collect import RolloutCollector
from alignlib.trainer.online_engine import EngineHandle, build_engine
from alignlib.trainer.online_passes import PassPlan, policy_logprobs
from alignlib.trainer.online_update import (
    RolloutPasses,
    RowTensors,
    check_online_estimator,
    collate_rows,
    minibatch_rows,
    online_minibatch,
    rollout_advantages,
)
from alignlib.trainer.state import TrainState
from alignlib.trainer.step import Context, LogprobKernel
from alignlib.trainer.update import MiniBatch, UpdateResult, merge_results


class OnlineSource:
    """Rollout batches: ``step`` is one batch of prompts × n samples and its k mini-batches."""

    def __init__(self, config: RunConfig, tokenizer: Any, estimator: UnifiedEstimator) -> None:
        assert config.rollout is not None
        self.config, self.rollout, self.online = config, config.rollout, config.online
        spec = self.online.rollout_correction
        self.correction = rollout_correction(None if spec is None else spec.model_dump())
        # The correction is a property of how rows were made, not of the preset: attached
        # here, and handed to the loop's state in ``prepare``.
        self.estimator = estimator.with_rollout_correction(self.correction)
        check_online_estimator(self.estimator, config.algorithm.name)
        router = router_for(estimator, self.online)
        if self.rollout.n < router.min_samples:
            raise ValueError(
                f"{type(router).__name__} needs rollout.n >= {router.min_samples} "
                f"(it has {self.rollout.n})"
            )
        distinguishing = estimator.distinguishing_fields()
        self.collector = RolloutCollector(config, tokenizer, router, distinguishing)
        self.sampler = self.collector.sampler
        train = config.train
        self.total_steps = train.max_steps or train.epochs * self.sampler.steps_per_epoch()
        self.ahead = self._ahead()
        self.position: Sampler | ConsumedPosition = (
            self.sampler if self.ahead is None else self.ahead.position
        )
        updates_per_step = self.online.mini_batches * self.online.ppo_epochs
        self.optimizer_steps = self.total_steps * updates_per_step
        # Clip-Cov/KL-Cov select tokens in prepare from the present log-probs: later
        # mini-batches need a fresh no-grad pass before they are prepared.
        self.live = estimator.reads_present_logprobs()
        # The engine's log-probs, for a rollout correction or off-policy sequence masking,
        # need log S_t added when the engine truncated its distribution (min-p, top-k, top-p).
        reads_engine = self.estimator.reads_behaviour()
        rollout = self.rollout
        truncated = rollout.top_p < 1 or rollout.top_k > 0 or rollout.min_p > 0
        self.passes = PassPlan(
            old=updates_per_step > 1
            or self.live
            or (self.correction is not None and self.correction.needs_old_in_prepare)
            or self.estimator.reads_old_in_prepare(),
            truncation=(rollout.top_k, rollout.top_p, rollout.min_p)
            if reads_engine and truncated
            else None,
            collision="old_log_sum_sq_probs" in self.estimator.requirements(),
            engine=reads_engine,
        )
        self.heldout = self.collector.heldout_set()
        self.engine: EngineHandle | None = None
        self.start, self.all_filtered = 0, 0  # steps whose row filters dropped every row

    def prepare(self, state: TrainState) -> None:
        """Before a resume loads trained weights: π_ref for a KL term is the initial policy."""
        state.estimator = self.estimator  # with the rollout correction, if any
        self.state = state
        self.kernel = state.kernel(temperature=self.rollout.temperature)
        self.reference: tuple[LogprobKernel, Context | None] | None = None
        if "ref_logprobs" in state.estimator.requirements():
            self.reference = state.reference_kernel(self.rollout.temperature)

    def begin(self, out_dir: Path, start: int) -> dict[str, float]:
        """After a resume has loaded the weights (so a separate engine starts in sync): the
        engine, and the untrained policy's held-out accuracy for comparison."""
        self.out_dir, self.start = out_dir, start
        state = self.state
        weights = self.gathered_weights()  # sharded (FSDP2): every rank takes part
        if not state.world.is_main:  # rank 0 generates; the others get its rows
            return {}
        self.engine = build_engine(
            self.rollout,
            state.model,
            state.tokenizer,
            out_dir,
            state.placement,
            self.config.model.chat_template,
            weights,
            state.world.rollout_scheduling,
        )
        if self.config.logging.completions:
            path = out_dir / COMPLETIONS
            self.collector.log = CompletionLog(path, self.config.logging.completions, start)
        if self.ahead is not None:
            self.ahead.begin(start)
        return self.evaluate(0) if start == 0 else {}

    def _ahead(self) -> AheadCollector | None:
        """The background generator of ``online.max_staleness`` > 0, or None (synchronous)."""

        def collect(step: int) -> Any:
            assert self.engine is not None
            return self.collector.collect(self.engine, step)

        return generate_ahead(self.config, self.correction is not None, collect, self.sampler)

    def _engine_lock(self) -> AbstractContextManager:
        """Held while the engine is used outside the background generator (evaluation)."""
        return self.ahead.lock if self.ahead is not None else nullcontext()

    def batches(self, step: int) -> Iterator[MiniBatch]:
        """Rollouts, rewards and routing; old/ref log-probs; then the k mini-batches (again
        for each of `online.ppo_epochs` passes), each built when the loop asks for it (after
        the previous one's update)."""
        began = time.perf_counter()
        world = self.state.world
        collected = None
        if self.engine is not None:
            ahead = self.ahead
            collected = (
                ahead.get(step, self.total_steps)
                if ahead
                else self.collector.collect(self.engine, step)
            )
        rows, self.step_metrics = world.broadcast(collected, self.kernel.device)
        self.tensors = tensors = collate_rows(rows, self.state.pad_id)
        if self.engine is not None:
            self.engine.release_memory(self.online.empty_cache)  # vLLM sleep mode, if set
        logprob_began = time.perf_counter()
        size = self.online.micro_batch_size
        passes = self.passes.run(self.kernel, tensors, size, self.reference)
        critic = self.state.critic
        values = None if critic is None else critic.values(tensors.host, size)
        self.timing = {"rollout": logprob_began - began, "logprob": 0.0}
        self.timing["logprob"] = time.perf_counter() - logprob_began
        device = self.kernel.device
        # The rows of each mini-batch of the first pass, for finish_step.
        self.parts = minibatch_rows(tensors.group_ids, self.online.mini_batches)
        given = self.rollout_advantages(tensors, passes, values)
        for epoch, (j, indices) in product(range(self.online.ppo_epochs), enumerate(self.parts)):
            on_device = indices.to(device)
            part = passes.take(on_device)
            if self.live and (epoch, j) != (0, 0):
                # Clip-Cov/KL-Cov (the high-entropy mask) select tokens from the present
                # policy's log-probs (entropy), and it has moved.
                current, entropy = policy_logprobs(self.kernel, tensors, indices, size)
                part = replace(part, current=current, entropy=entropy)
            split = self.kernel.batching(size)  # rows, or the token budget
            batch = online_minibatch(tensors, indices, part, split, given)
            if critic is not None and values is not None:  # V_old → GAE; the critic's step
                batch = train_critic(critic, self.state.estimator, batch, values[on_device], step)
            yield batch

    def rollout_advantages(
        self, tensors: RowTensors, passes: RolloutPasses, values: Tensor | None
    ) -> dict[str, Tensor]:
        """The terms' advantages over the whole rollout batch when it is split into several
        mini-batches, so a statistic across groups (a batch std, whitening) spans all of them
        as in TRL and verl; {} for one mini-batch (its own are the same)."""
        if len(self.parts) < 2:
            return {}
        estimator, device = self.state.estimator, self.kernel.device
        return rollout_advantages(estimator, tensors, device, passes, values)

    def finish_step(
        self, step: int, results: list[UpdateResult], seconds: float
    ) -> dict[str, float]:
        """Weights → engine; the step's metrics (rollout, update, entropy on own samples)."""
        metrics = self.step_metrics | merge_results(results)
        self.check_filtered(step, metrics)
        sync_began = time.perf_counter()
        weights = self.gathered_weights()
        if self.engine is not None:
            engine, model = self.engine, self.state.model
            if self.ahead is not None:  # waits for the generation in flight, then a new version
                self.ahead.synced(lambda: engine.sync(model, weights))
            else:
                engine.sync(model, weights)
        sync = time.perf_counter() - sync_began
        tensors = self.tensors
        samples = (tensors.roles == int(Role.SAMPLE)).unsqueeze(-1) * tensors.mask
        if samples.any():  # the policy's entropy on its own samples (entropy collapse)
            weighted = sum(
                float((r.entropy * samples[rows].to(r.entropy.device)).sum())
                for r, rows in zip(results, self.parts, strict=False)  # the first pass
                if r.entropy is not None
            )
            metrics["rollout/entropy"] = float(weighted / samples.sum())
        train_seconds = seconds - self.timing["rollout"]
        return metrics | {
            "train/rows": float(tensors.num_rows),
            "train/tokens_per_s": float(tensors.attention.sum()) / max(train_seconds, 1e-9),
            "epoch": float(self.position.epoch),
            "time/logprob_s": self.timing["logprob"],
            "time/update_s": train_seconds - self.timing["logprob"],
            "time/sync_s": sync,
        }

    def check_filtered(self, step: int, metrics: dict[str, float]) -> None:
        """A run whose row filters (DAPO's equal-reward groups) dropped every row at every step
        trained nothing: fail at the end, as a run whose every step was skipped does."""
        fractions = {
            k: v for k, v in metrics.items() if k.endswith("/filtered_frac") and "rollout/" not in k
        }
        if fractions and min(fractions.values()) >= 1:
            self.all_filtered += 1
        # Judged only for a run from step 0: a resumed run did not count its earlier steps.
        steps = self.total_steps
        if step == steps and self.start == 0 and self.all_filtered == steps:
            raise ValueError(
                f"every step filtered out all of its groups ({next(iter(fractions))} = 1 at all "
                f"{steps} steps: each prompt's rollouts got equal rewards, so nothing trained and "
                "final/ was not written); check the rewards (do they differ within a group?), "
                "raise rollout.n, or set online.dynamic_sampling.enabled: true"
            )

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out accuracy and in-loop benchmarks, each when it is due at ``step`` (rank 0:
        its engine holds the current weights)."""
        if self.engine is None:
            return {}
        metrics: dict[str, float] = {}
        # Through the rollout engine: it holds the current weights (vLLM / Ray included).
        engine = self.engine.engine
        if self.heldout is not None and self.heldout_due(step):
            cap = self.online.heldout.max_new_tokens or self.rollout.max_new_tokens
            with self._engine_lock():
                metrics |= self.collector.heldout_accuracy(engine, self.heldout, cap, step)
        with self._engine_lock():
            return metrics | in_loop_eval(self.state, self.config, self.out_dir, step, engine)

    def heldout_due(self, step: int) -> bool:
        every = self.online.heldout.every
        return self.heldout is not None and (
            step in (0, self.total_steps) or (every is not None and step % every == 0)
        )

    def gathered_weights(self) -> dict[str, torch.Tensor] | None:
        """A sharded (FSDP2) policy's full weights for the engine (a collective: every rank
        calls it; rank 0 gets them); None for a whole policy, which the engine reads itself."""
        if self.state.shards is None:
            return None
        from alignlib.trainer.fsdp import full_weights

        return full_weights(self.state.shards)

    def checkpoint_due(self, step: int) -> bool:
        every = self.config.checkpoint.every
        return bool(every) and step % every == 0

    def close(self) -> None:
        if self.ahead is not None:
            self.ahead.close()
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
