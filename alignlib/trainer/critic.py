"""The critic of a method whose advantage reads a value model (``ppo_gae``'s GAE): a one-output
head on a decoder, trained beside the policy on the returns of each rollout.

It runs through the same micro-batch kernel as the policy (its V(s_t) of every completion token
takes the place of log π: devices, packing, token budgets and data-parallel workers behave the
same), and its update is the policy's: prepare the mini-batch, accumulate the micro-batch
gradients of the estimator's :class:`~alignlib.estimator.ValueLoss`, clip, step. Checkpoints
hold it in critic/ (with its optimizer and schedule in the trainer state); the run folder's
critic/ is a plain sequence classifier (LoRA merged), the next run's `critic.name_or_path`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from alignlib.config.schema import RunConfig
from alignlib.device import Placement
from alignlib.estimator import Batch, UnifiedEstimator, ValueLoss
from alignlib.trainer.build import build_optimizer
from alignlib.trainer.checkpoint import CheckpointError, load_weights, read_weights, save_model
from alignlib.trainer.memory import check_fits
from alignlib.trainer.model import apply_lora, load_policy
from alignlib.trainer.step import HostRows, LogprobKernel, OptimizerStep
from alignlib.trainer.update import MiniBatch, update
from alignlib.trainer.weights import save_plain_model
from alignlib.trainer.world import SINGLE, World

FOLDER = "critic"
"""The critic's folder in a checkpoint and in the run folder."""


@dataclass
class Critic:
    """A value model, its kernel, its loss and its optimizer."""

    model: nn.Module
    kernel: LogprobKernel
    estimator: UnifiedEstimator
    """One :class:`ValueLoss` term (the preset's clip)."""
    optimizer_step: OptimizerStep
    tokenizer: PreTrainedTokenizerBase
    seed: int = 0
    """The run's seed: dropout masks are drawn per micro-batch from (seed, step, rows)."""
    shards: nn.Module | None = None
    """With FSDP2: the sharded wrapper of ``model`` the kernel calls."""

    @classmethod
    def build(
        cls,
        config: RunConfig,
        loss: ValueLoss,
        placement: Placement,
        total_optimizer_steps: int,
        world: World = SINGLE,
        policy: nn.Module | None = None,
    ) -> Critic:
        """Load ``critic.name_or_path`` (default: the policy's) under a one-output head, with
        the run's LoRA settings, and its own optimizer over ``total_optimizer_steps``; on a GPU
        its training state must fit beside the ``policy``'s."""
        name = config.critic.name_or_path or config.model.name_or_path
        key = "critic.name_or_path" if config.critic.name_or_path else "model.name_or_path"
        source = config.model.model_copy(update={"name_or_path": name})
        model, tokenizer = load_policy(source, placement, head="score", key=key)
        if config.lora.enabled:
            model = apply_lora(model, config.lora)
        check_fits(model, name, placement, world, key, beside=policy)
        model.train()
        shards = None
        if world.sharded:  # FSDP2, as the policy: the optimizer then holds the shards
            from alignlib.trainer.fsdp import shard

            shards = shard(model, world, placement, values=True)
        train = config.train
        kernel = LogprobKernel(
            model,
            placement,
            train.logprob_chunk_size,
            world=world,
            module=shards,
            packing=train.packing,
            max_tokens=train.max_tokens_per_micro_batch,
            values=True,
        )
        params = [p for p in model.parameters() if p.requires_grad]
        optim = config.critic.optim
        optimizer, scheduler = build_optimizer(params, optim, total_optimizer_steps)
        step = OptimizerStep(params, optimizer, scheduler, optim.grad_clip, None, train.nonfinite)
        estimator = UnifiedEstimator(terms=[loss])
        return cls(model, kernel, estimator, step, tokenizer, train.seed, shards)

    def values(self, rows: HostRows, micro_batch_size: int) -> Tensor:
        """[R, W] V_old of every token of ``rows`` (no gradient), on the device."""
        return self.kernel.all_rows(rows, micro_batch_size)[0]

    def update(self, batch: MiniBatch, step: int) -> dict[str, float]:
        """One optimizer step of the value loss on ``batch`` (its fields hold the values and
        returns); metrics under critic/."""
        metrics = update(self.kernel, self.estimator, self.optimizer_step, batch, step, self.seed)
        named = {
            k if k.startswith("critic/") else f"critic/{k}": v for k, v in metrics.metrics.items()
        }
        named.pop("critic/loss", None)  # the value loss, already critic/value_loss
        return named

    def gather(self, optimizer: bool = True) -> tuple[dict[str, Tensor] | None, Any]:
        """(full weights, full optimizer state) of a sharded critic — a collective: every rank
        calls it, rank 0 gets the tensors — or (None, None) when it is whole."""
        if self.shards is None:
            return None, None
        from alignlib.trainer.fsdp import full_optimizer_state, full_weights

        weights = full_weights(self.shards)
        if not optimizer:
            return weights, None
        return weights, full_optimizer_state(self.shards, self.optimizer_step.optimizer)

    def state_dict(self, optimizer_state: Any = None) -> dict[str, Any]:
        """Its optimizer (``optimizer_state``: a sharded one's, gathered) and schedule, for the
        trainer state; the weights go to critic/."""
        step = self.optimizer_step
        optimizer = optimizer_state if optimizer_state is not None else step.optimizer.state_dict()
        return {"optimizer": optimizer, "scheduler": step.scheduler.state_dict()}

    def save(self, checkpoint: Path, weights: dict[str, Tensor] | None = None) -> None:
        """Its weights (the adapter alone with LoRA; ``weights``: gathered shards) into
        ``checkpoint``/critic."""
        save_model(checkpoint / FOLDER, self.model, self.tokenizer, weights)

    def load(self, checkpoint: Path, state: dict[str, Any]) -> None:
        """Weights from ``checkpoint``/critic, optimizer and schedule from its state (every
        rank: a sharded critic takes its shards of them)."""
        folder = checkpoint / FOLDER
        if "critic" not in state or not folder.is_dir():
            raise CheckpointError(
                f"checkpoint {checkpoint} holds no critic (its run trained none): resume it "
                "with the algorithm it ran, or start this run afresh (checkpoint.resume: false)"
            )
        optimizer = self.optimizer_step.optimizer
        if self.shards is not None:
            from alignlib.trainer.fsdp import load_full_state

            weights = read_weights(folder)[0]
            load_full_state(self.shards, optimizer, weights, state["critic"]["optimizer"])
        else:
            load_weights(self.model, folder)
            optimizer.load_state_dict(state["critic"]["optimizer"])
        self.optimizer_step.scheduler.load_state_dict(state["critic"]["scheduler"])

    def save_final(self, out_dir: Path, weights: dict[str, Tensor] | None = None) -> None:
        """The run folder's critic/: a plain sequence classifier (LoRA merged in; ``weights``:
        gathered shards)."""
        save_plain_model(self.model, self.tokenizer, out_dir / FOLDER, weights=weights)


def train_critic(
    critic: Critic, estimator: UnifiedEstimator, batch: MiniBatch, values: Tensor, step: int
) -> MiniBatch:
    """The policy's mini-batch with the critic's V_old of its rows (GAE reads them), after one
    critic step on the same rows and micro-batches, regressing on the returns the estimator
    computes from them; the critic's metrics ride along with the policy's."""
    fields = batch.fields.to(critic.kernel.device).replace(values=values)
    returns = estimator.value_targets(fields)
    assert returns is not None, "a critic is trained only when an advantage reads its values"
    targets = Batch(
        logprobs=torch.zeros_like(returns), mask=fields.mask, values=values, returns=returns
    )
    metrics = critic.update(MiniBatch(batch.rows, targets, batch.micro_batches), step)
    return replace(batch, fields=fields, metrics=batch.metrics | metrics)
