"""Does the training state fit the GPU? Checked once the policy is loaded, before any step.

A full fine-tune keeps, per trainable parameter, its weight, its gradient and AdamW's two
moments, all in the parameter's dtype (16 bytes in ``bf16-mixed``, whose master weights are
fp32); a frozen parameter (LoRA's base) only its weight. Without this check such a run meets
CUDA's out-of-memory error at its first optimizer step, when AdamW allocates its state — for an
online run after the first rollout, minutes in. The estimate leaves out activations, the KV
cache and a frozen reference copy, so it is a floor: above the device's memory the run cannot
fit whatever the batch size, and it is refused in one line that says what to change.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from alignlib.device import Placement
from alignlib.trainer.world import World

GIB = 2**30
TIGHT = 0.9
"""Above this share of the device's memory the state leaves too little room for activations:
a warning, not an error (gradient checkpointing and small micro-batches may still fit)."""


def state_bytes(model: nn.Module, shards: int = 1) -> int:
    """Bytes of weights, gradients and AdamW moments on one device, ``shards`` ways sharded."""
    total = 0
    for p in model.parameters():
        copies = 4 if p.requires_grad else 1  # weight (+ gradient, exp_avg, exp_avg_sq)
        total += p.numel() * p.element_size() * copies
    return total // shards


def memory_problem(
    model: nn.Module,
    name: str,
    device_bytes: int,
    shards: int = 1,
    key: str = "model.name_or_path",
    beside: int = 0,
) -> str | None:
    """One line saying why the state cannot fit ``device_bytes`` (beside ``beside`` bytes
    another model's state already holds: the policy's, for a critic), or None when it can."""
    need = state_bytes(model, shards)
    if need + beside <= device_bytes:
        return None
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    spread = f", sharded over {shards} ranks" if shards > 1 else ""
    others = f" beside the policy's {beside / GIB:.1f} GiB" if beside else ""
    return (
        f"{key} {name}: its weights, gradients and AdamW state alone need "
        f"{need / GIB:.1f} GiB per GPU ({params / 1e9:.2f} B parameters, {trainable / 1e9:.2f} B "
        f"trainable{spread}){others}, more than the GPU's {device_bytes / GIB:.0f} GiB; "
        "train an adapter (lora.enabled: true), shard the model over more GPUs (distributed: "
        "{num_workers: N, strategy: fsdp2, use_gpu: true}), or keep bf16 weights and optimizer "
        "state (model.precision: bf16)"
    )


def check_fits(
    model: nn.Module,
    name: str,
    placement: Placement,
    world: World,
    key: str = "model.name_or_path",
    beside: nn.Module | None = None,
) -> None:
    """Refuse (ValueError) a run whose training state exceeds its GPU; warn when it leaves under
    10% of it. ``beside``: a model trained on the same GPU (a critic's policy). Nothing to
    check on a CPU, whose memory the operating system extends."""
    if placement.device.type != "cuda":
        return
    device_bytes = torch.cuda.get_device_properties(placement.device).total_memory
    shards = world.size if world.sharded else 1
    held = 0 if beside is None else state_bytes(beside, shards)
    need = state_bytes(model, shards) + held
    if need > device_bytes:
        raise ValueError(memory_problem(model, name, device_bytes, shards, key, held))
    if need > TIGHT * device_bytes:
        warnings.warn(
            f"the training state takes {need / GIB:.1f} of the GPU's {device_bytes / GIB:.0f} "
            "GiB before activations; if the first step runs out of memory, set "
            "model.gradient_checkpointing: true or lower the micro-batch size",
            stacklevel=2,
        )
