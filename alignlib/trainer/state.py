"""The checkpointable train state: model, optimizer, schedule, the source's position, the
estimator's state and the RNGs — everything the loop advances and a resume restores."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torch import nn
from transformers import PreTrainedTokenizerBase

from alignlib.config.schema import RunConfig
from alignlib.device import Placement
from alignlib.estimator import UnifiedEstimator
from alignlib.trainer.build import build_optimizer
from alignlib.trainer.checkpoint import atomic_directory_write, save_checkpoint, save_model
from alignlib.trainer.critic import Critic
from alignlib.trainer.model import load_policy, load_reference, reference_policy
from alignlib.trainer.model_card import write_model_card
from alignlib.trainer.reference_sync import ReferenceSync
from alignlib.trainer.resume import checkpoint_state, resume_from_checkpoint
from alignlib.trainer.step import Context, LogprobKernel, OptimizerStep
from alignlib.trainer.weights import save_plain_model
from alignlib.trainer.world import SINGLE, World


class Position(Protocol):
    """Where a source is in its data (a sampler's epoch and cursor): saved with the state."""

    def state_dict(self) -> dict[str, int]: ...

    def load_state_dict(self, state: dict[str, int]) -> None: ...


@dataclass
class TrainState:
    """The policy and its optimizer for ``total_optimizer_steps`` steps, with save / restore."""

    config: RunConfig
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    estimator: UnifiedEstimator
    placement: Placement
    optimizer_step: OptimizerStep
    world: World = SINGLE
    """The data-parallel workers this process trains with (one: itself)."""
    shards: nn.Module | None = None
    """With FSDP2: the sharded PolicyLogprobs wrapper of ``model`` the kernel calls."""
    critic: Critic | None = None
    """The value model trained beside the policy, when an advantage reads one (GAE)."""
    reference_sync: ReferenceSync | None = None
    """π_ref and its moves toward the policy (`train.reference_sync`), once it is built."""

    @classmethod
    def create(
        cls,
        config: RunConfig,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        estimator: UnifiedEstimator,
        placement: Placement,
        total_optimizer_steps: int,
        world: World = SINGLE,
        shards: nn.Module | None = None,
    ) -> TrainState:
        params = [p for p in model.parameters() if p.requires_grad]
        # HPT's rule: skip steps whose gradient norm exceeds online.skip_grad_norm.
        skip_grad_norm = config.online.skip_grad_norm if config.rollout is not None else None
        optimizer, scheduler = build_optimizer(params, config.optim, total_optimizer_steps)
        step = OptimizerStep(
            params,
            optimizer,
            scheduler,
            config.optim.grad_clip,
            skip_grad_norm,
            config.train.nonfinite,
        )
        loss = estimator.critic_loss()
        critic = None
        if loss is not None:
            critic = Critic.build(config, loss, placement, total_optimizer_steps, world, model)
        return cls(config, model, tokenizer, estimator, placement, step, world, shards, critic)

    def reset_optimizer(self, total_optimizer_steps: int) -> None:
        """A fresh optimizer and schedule over the same parameters (INPO's iterations)."""
        fresh = TrainState.create(
            self.config,
            self.model,
            self.tokenizer,
            self.estimator,
            self.placement,
            total_optimizer_steps,
            self.world,
            self.shards,
        ).optimizer_step
        fresh.skip_grad_norm = self.optimizer_step.skip_grad_norm
        fresh.taken, fresh.skipped = self.optimizer_step.taken, self.optimizer_step.skipped
        self.optimizer_step = fresh

    @property
    def optimizer(self) -> Any:
        return self.optimizer_step.optimizer

    @property
    def scheduler(self) -> Any:
        return self.optimizer_step.scheduler

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    def kernel(
        self,
        model: nn.Module | None = None,
        temperature: float = 1.0,
        module: nn.Module | None = None,
    ) -> LogprobKernel:
        """The micro-batch kernel of ``model`` (default: the policy) on the run's device;
        ``module``: the FSDP2 wrapper of ``model`` to call (the policy's own by default)."""
        train = self.config.train
        policy = model is None or model is self.model
        # A statistic of the LM head read in the training forward (WPO) needs padded rows.
        reads_head = "log_sum_sq_probs" in self.estimator.requirements()
        return LogprobKernel(
            model or self.model,
            self.placement,
            train.logprob_chunk_size,
            temperature,
            self.world,
            module or (self.shards if policy else None),
            packing=train.packing and not reads_head,
            max_tokens=train.max_tokens_per_micro_batch,
        )

    def reference_kernel(self, temperature: float = 1.0) -> tuple[LogprobKernel, Context | None]:
        """π_ref: ``model.reference_name_or_path`` when set, else the policy before any update
        (call before a resume loads weights): with LoRA the policy under the adapter-off
        context; else a frozen copy. With FSDP2 it is sharded like the policy (a fresh load: a
        sharded module cannot be copied)."""
        model_config = self.config.model
        distinct = model_config.reference_name_or_path is not None
        if self.shards is not None and (distinct or not self.config.lora.enabled):
            from alignlib.trainer.fsdp import frozen_shards

            loaded = (
                load_reference(model_config, self.placement, self.tokenizer)
                if distinct
                else load_policy(model_config, self.placement)[0]
            )
            reference, wrapper = frozen_shards(loaded, self.world, self.placement)
            self.follow(reference, wrapper)
            return self.kernel(reference, temperature, wrapper), None
        model, context = reference_policy(
            self.model, model_config, self.config.lora.enabled, self.placement, self.tokenizer
        )
        self.follow(model)
        return self.kernel(model, temperature), context

    def follow(self, reference: nn.Module, wrapper: nn.Module | None = None) -> None:
        """With `train.reference_sync`, ``reference`` (``wrapper``: its FSDP2 wrapper) moves
        toward the policy during the run (TR-DPO)."""
        sync = self.config.train.reference_sync
        if sync is not None:
            wrappers = (self.shards, wrapper)
            self.reference_sync = ReferenceSync(sync, self.model, reference, wrappers)

    def after_update(self) -> None:
        """After each optimizer step: π_ref moves when due (`train.reference_sync`)."""
        if self.reference_sync is not None:
            self.reference_sync.after_update()

    def save(self, out_dir: Path, step: int, position: Position) -> None:
        """checkpoints/step-N: weights plus a weights_only-safe state with the config. Rank 0
        writes it (every rank holds the same weights and state)."""
        weights = optimizer = None
        if self.shards is not None:  # every rank takes part in gathering the shards
            from alignlib.trainer.fsdp import full_optimizer_state, full_weights

            weights = full_weights(self.shards)
            optimizer = full_optimizer_state(self.shards, self.optimizer)
        critic, sync = self.critic, self.reference_sync
        critic_weights, critic_optimizer = critic.gather() if critic else (None, None)
        reference_weights = sync.gather() if sync else None
        if not self.world.is_main:
            return
        state = checkpoint_state(
            self.config, step, self.optimizer, self.scheduler, position, self.estimator
        )
        if optimizer is not None:
            state["optimizer"] = optimizer
        extras = []  # what else the checkpoint folder holds
        if critic is not None:
            state["critic"] = critic.state_dict(critic_optimizer)
            extras.append(functools.partial(critic.save, weights=critic_weights))
        if sync is not None:
            state["reference_sync"] = sync.state_dict()
            extras.append(
                functools.partial(sync.save, tokenizer=self.tokenizer, weights=reference_weights)
            )
        keep = self.config.checkpoint.keep_last
        save_checkpoint(
            out_dir, step, self.model, self.tokenizer, state, keep, weights, extras=extras
        )

    def restore(self, out_dir: Path, position: Position) -> int:
        """The newest loadable checkpoint of this run (config checked, changes applied);
        returns its step, 0 when there is none."""
        return resume_from_checkpoint(
            out_dir,
            self.config,
            self.model,
            self.optimizer,
            self.scheduler,
            position,
            self.estimator,
            self.shards,
            (self.critic, self.reference_sync),
        )

    def save_final(self, out_dir: Path) -> None:
        """final/: the model (or adapter) in Hugging Face format; merged/ when asked."""
        weights = None
        if self.shards is not None:  # every rank takes part in gathering the shards
            from alignlib.trainer.fsdp import full_weights

            weights = full_weights(self.shards)
        critic_weights = self.critic.gather(optimizer=False)[0] if self.critic else None
        if not self.world.is_main:
            return
        atomic_directory_write(
            out_dir / "final", lambda tmp: save_model(tmp, self.model, self.tokenizer, weights)
        )
        if self.config.lora.enabled and self.config.lora.save_merged:
            save_plain_model(self.model, self.tokenizer, out_dir / "merged", weights=weights)
        if self.critic is not None:
            self.critic.save_final(out_dir, critic_weights)
        write_model_card(out_dir, self.config)  # final/README.md (and merged/): the Hub's card
