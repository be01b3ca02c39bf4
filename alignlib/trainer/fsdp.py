"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for policies that do not fit one device: every
decoder layer is its own unit, and the :class:`PolicyLogprobs` wrapper holds the rest (the
embedding, final norm and LM head — tied weights stay in one unit). Checkpoints stay one full
Hugging Face folder (gathered through torch.distributed.checkpoint's state-dict helpers), so
an N-rank FSDP2 run resumes on M ranks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from alignlib.device import Placement
from alignlib.trainer.forward import PolicyLogprobs
from alignlib.trainer.world import World

PREFIX = "model."  # the wrapper's own attribute in front of every Hugging Face name
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(
    model: nn.Module, world: World, placement: Placement, values: bool = False
) -> PolicyLogprobs:
    """Shard ``model`` over the world's ranks; returns the wrapper the kernel calls (``values``:
    a critic's, giving V(s_t))."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(placement.device.type, (world.size,))
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(
            "distributed.strategy fsdp2: the model's decoder has no `layers` list to shard; "
            "use distributed.strategy: ddp"
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    wrapper = PolicyLogprobs(model, values)
    fully_shard(wrapper, mesh=mesh)
    return wrapper


def frozen_shards(
    model: nn.Module, world: World, placement: Placement
) -> tuple[nn.Module, PolicyLogprobs]:
    """A frozen reference policy (freshly loaded: a sharded module cannot be copied) sharded
    like the trained one, in the frozen dtype; returns (model, the wrapper the kernel calls)."""
    model = model.to(placement.frozen_dtype).eval().requires_grad_(False)
    return model, shard(model, world, placement)


def full_weights(wrapper: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict under Hugging Face names, on the CPU (a collective: every rank calls
    it; rank 0 gets the tensors, the others an empty dict)."""
    state = get_model_state_dict(wrapper, options=FULL)
    return {k.removeprefix(PREFIX): v for k, v in state.items()}


def full_optimizer_state(wrapper: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, unsharded (a collective)."""
    return get_optimizer_state_dict(wrapper, optimizer, options=FULL)


def load_full_state(
    wrapper: nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
) -> None:
    """Each rank takes its shards of a full checkpoint (weights and optimizer state)."""
    load_full_weights(wrapper, weights)
    options = StateDictOptions(full_state_dict=True)
    if "state" not in optimizer_state or any(isinstance(k, int) for k in optimizer_state["state"]):
        raise ValueError(
            "checkpoint: its optimizer state comes from a run without FSDP2 (keyed by position, "
            "not parameter name); resume it with distributed.strategy: ddp"
        )
    set_optimizer_state_dict(wrapper, optimizer, optimizer_state, options=options)


def load_full_weights(wrapper: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Each rank takes its shards of full weights (Hugging Face names), in place."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    wrapper.reshard()  # the sharded parameters are the ones the optimizer holds
    with torch.no_grad():
        for name, param in wrapper.named_parameters():
            key = name.removeprefix(PREFIX)
            if key not in weights:
                raise ValueError(f"checkpoint: no weights for {key}")
            full = weights[key].to(param.dtype)
            if isinstance(param, DTensor):  # this rank's shard of the full tensor
                full = distribute_tensor(full, param.device_mesh, param.placements)
            param.copy_(full)
