"""TR-DPO's moving reference (Gorbatovski et al. 2024, "Learn Your Reference Model for Real
Good Alignment"; TRL's `sync_ref_model`): every `train.reference_sync.every` optimizer steps
π_ref ← α·π_θ + (1 − α)·π_ref, parameter by parameter (α = 1: the hard update). Any method that
reads a reference takes it: the DPO family offline (with `train.reference: live`), a KL term
online. The reference then is training state: it is saved in every checkpoint beside the
policy and loaded on resume, or a resumed run would silently go back to the initial one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from alignlib.config.loader import ConfigError
from alignlib.config.schema import ReferenceSyncConfig, RunConfig
from alignlib.estimator import UnifiedEstimator
from alignlib.trainer.checkpoint import CheckpointError, load_weights, read_weights, save_model

FOLDER = "reference"
"""checkpoints/step-N/reference: the moved reference's weights (a Hugging Face folder)."""


def check_reference_sync(config: RunConfig, estimator: UnifiedEstimator) -> None:
    """Refuse, before the model loads, a reference that cannot move or is never read."""
    if config.train.reference_sync is None:
        return
    name = config.algorithm.name or "(components)"
    key = "train.reference_sync"
    refusals = [
        (
            "ref_logprobs" not in estimator.requirements(),
            f"algorithm {name} reads no reference log-probs, so there is nothing to move; "
            "remove it, or pick a method with a reference (dpo and its family, grpo with "
            "kl_coef, ...)",
        ),
        (
            config.lora.enabled,
            "with LoRA π_ref is the policy with its adapter off (the base model itself), which "
            "cannot move apart from the policy; remove it or set lora.enabled: false",
        ),
        (
            config.iterative is not None,
            "the preference iterations move their reference with iterative.reference: "
            "previous (π_ref = π_t each iteration); remove it",
        ),
        (
            config.rollout is None and config.train.reference != "live",
            f"train.reference: {config.train.reference} does not score a moving π_ref as it "
            "moves (precompute caches its log-probs once); set train.reference: live",
        ),
    ]
    for refused, why in refusals:
        if refused:
            raise ConfigError(f"{key}: {why}")


def matched_parameters(policy: nn.Module, reference: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """(π_ref's, π_θ's) parameter pairs by name; refused with one line unless both models
    have the same parameters with the same shapes."""
    own = dict(policy.named_parameters())
    theirs = dict(reference.named_parameters())
    differing = sorted(
        k for k in own.keys() | theirs.keys() if k not in own or k not in theirs
    ) or sorted(k for k in own if own[k].shape != theirs[k].shape)
    if differing:
        raise ConfigError(
            f"train.reference_sync: the reference's parameters differ from the policy's (first: "
            f"{differing[0]}; {len(differing)} in all); π_ref ← α·π_θ + (1 − α)·π_ref needs one "
            "architecture: give model.reference_name_or_path a model of the policy's family and "
            "size, or remove train.reference_sync"
        )
    return [(theirs[k], own[k]) for k in own]


@torch.no_grad()
def mix_into(pairs: list[tuple[Tensor, Tensor]], alpha: float) -> None:
    """target ← α·source + (1 − α)·target for every (target, source) pair, in place, in the
    target's dtype (a bf16 frozen copy rounds as TRL's does). Sharded (FSDP2) pairs mix shard
    by shard: both models are sharded alike."""
    for target, source in pairs:
        target.mul_(1.0 - alpha).add_(source.detach().to(target.dtype), alpha=alpha)


class ReferenceSync:
    """The reference model and the count of optimizer steps taken, with save / load."""

    def __init__(
        self,
        config: ReferenceSyncConfig,
        policy: nn.Module,
        reference: nn.Module,
        wrappers: tuple[nn.Module | None, nn.Module | None] = (None, None),
    ) -> None:
        """``wrappers``: the FSDP2 wrappers of (policy, reference), when sharded."""
        self.every, self.alpha = config.every, config.alpha
        self.reference, self.wrappers = reference, wrappers
        self.pairs = matched_parameters(policy, reference)
        self.updates = 0

    def after_update(self) -> bool:
        """Count one optimizer step; on every ``every``-th, mix the policy into π_ref."""
        self.updates += 1
        if self.updates % self.every:
            return False
        for wrapper in self.wrappers:  # the registered parameters are then the shards
            if wrapper is not None:
                wrapper.reshard()
        mix_into(self.pairs, self.alpha)
        return True

    def gather(self) -> dict[str, Tensor] | None:
        """The full weights of a sharded reference (a collective: every rank calls it; rank 0
        gets them), or None when it is whole."""
        wrapper = self.wrappers[1]
        if wrapper is None:
            return None
        from alignlib.trainer.fsdp import full_weights

        return full_weights(wrapper)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def save(
        self,
        checkpoint: Path,
        tokenizer: PreTrainedTokenizerBase,
        weights: dict[str, Tensor] | None = None,
    ) -> None:
        """The reference's weights (``weights``: gathered shards) into ``checkpoint``/reference."""
        save_model(checkpoint / FOLDER, self.reference, tokenizer, weights)

    def load(self, checkpoint: Path, state: dict[str, Any]) -> None:
        """The moved reference and the step count of ``checkpoint`` (every rank: a sharded
        reference takes its shards)."""
        folder = checkpoint / FOLDER
        if "reference_sync" not in state or not folder.is_dir():
            raise CheckpointError(
                f"checkpoint {checkpoint} holds no moved reference (its run kept π_ref fixed): "
                "resume it without train.reference_sync, or start this run afresh "
                "(checkpoint.resume: false)"
            )
        wrapper = self.wrappers[1]
        if wrapper is None:
            load_weights(self.reference, folder)
        else:
            from alignlib.trainer.fsdp import load_full_weights

            load_full_weights(wrapper, read_weights(folder)[0])
        self.updates = int(state["reference_sync"]["updates"])
