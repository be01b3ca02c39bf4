"""A policy's weights under plain Hugging Face names, for whoever reads them without peft: a
rollout engine after every step, and the `merged/` folder at the end of a LoRA run.

With LoRA the names are peft's (``base_model.model.…``, ``….base_layer.weight``, ``lora_A`` /
``lora_B``, and for modules peft trains whole, such as a reward model's score head,
``….modules_to_save.default.…`` beside ``….original_module.…``); a plain model has none of
them. Merged means W + scaling · B A in every adapted layer; unmerged (the base model) means the
base weights. A module trained whole is its trained copy either way, as peft's own
``merge_and_unload`` and ``unload`` leave it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from alignlib.trainer.checkpoint import atomic_directory_write, save_model
from alignlib.trainer.model import frozen_copy

PEFT_PREFIX = "base_model.model."
_WHOLE = re.compile(
    r"(?P<module>.+)\.(?P<copy>original_module|modules_to_save\.[^.]+)\.(?P<rest>.+)"
)
"""A parameter of a module peft trains whole: its original, or the trained copy."""


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "merge_adapter") and hasattr(model, "get_base_model")


def plain_name(name: str) -> str | None:
    """The plain Hugging Face name of a peft base-model parameter (no ``base_model.model.``
    prefix), or None for what a plain model does not have (the LoRA factors, the original of a
    module trained whole)."""
    if "lora_" in name:
        return None
    whole = _WHOLE.fullmatch(name)
    if whole is not None:
        return None if whole["copy"] == "original_module" else f"{whole['module']}.{whole['rest']}"
    return name.replace(".base_layer.", ".")


def is_trained(name: str) -> bool:
    """Whether a peft parameter can change in training: an adapted layer's, or a module's
    trained whole (the rest of the base model is frozen)."""
    return ".base_layer." in name or ".modules_to_save." in name


def policy_weights(model: nn.Module, adapted_only: bool = True) -> dict[str, Tensor]:
    """The policy's weights under plain Hugging Face names.

    With LoRA the adapter is merged for the copy and unmerged again; ``adapted_only`` keeps just
    what training changes (the rest of the base model never does).
    """
    if not is_peft(model):
        return {name: p.detach() for name, p in model.named_parameters()}
    model.merge_adapter()
    try:
        weights = {}
        for name, param in model.get_base_model().named_parameters():
            plain = plain_name(name)
            if plain is not None and (is_trained(name) or not adapted_only):
                weights[plain] = param.detach().clone()
        return weights
    finally:
        model.unmerge_adapter()


def plain_weights(
    model: nn.Module, gathered: dict[str, Tensor], merge: bool, adapted_only: bool = False
) -> dict[str, Tensor]:
    """A gathered state dict under plain Hugging Face names. With LoRA: the adapter merged into
    each adapted layer (W + scaling · B A, peft's merge) or, with ``merge`` False, the base
    weights alone; ``adapted_only`` keeps just what training changes."""
    if not is_peft(model):
        return gathered
    plain: dict[str, Tensor] = {}
    for name, module in model.get_base_model().named_modules():
        scaling = getattr(module, "scaling", None)
        if not isinstance(scaling, dict) or not hasattr(module, "base_layer"):
            continue
        weight = gathered[f"{PEFT_PREFIX}{name}.base_layer.weight"]
        if merge:
            for adapter, scale in scaling.items():
                a = gathered[f"{PEFT_PREFIX}{name}.lora_A.{adapter}.weight"]
                b = gathered[f"{PEFT_PREFIX}{name}.lora_B.{adapter}.weight"]
                delta = (b.to(torch.float64) @ a.to(torch.float64)) * scale
                delta = delta.T if getattr(module, "fan_in_fan_out", False) else delta
                weight = (weight.to(torch.float64) + delta).to(weight.dtype)
        plain[f"{name}.weight"] = weight
        bias = gathered.get(f"{PEFT_PREFIX}{name}.base_layer.bias")
        if bias is not None:
            plain[f"{name}.bias"] = bias
    for key, value in gathered.items():  # the rest: what no adapted layer holds
        name = key.removeprefix(PEFT_PREFIX)
        if ".base_layer." in name or (adapted_only and not is_trained(name)):
            continue
        renamed = plain_name(name)
        if renamed is not None:
            plain[renamed] = value
    return plain


def save_plain_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    target: Path,
    base_only: bool = False,
    weights: dict[str, Tensor] | None = None,
) -> Path:
    """The current policy (LoRA merged in, or with `base_only` the frozen base model without the
    adapter) as a Hugging Face folder any loader reads; ``weights``: the full state dict of a
    sharded (FSDP2) policy, gathered by the caller (a sharded module cannot be copied)."""
    plain = model
    if is_peft(model) and weights is not None:  # sharded: the names say what is what
        plain, weights = model.get_base_model(), plain_weights(model, weights, not base_only)
    elif is_peft(model):
        copy = frozen_copy(model)
        plain = copy.unload() if base_only else copy.merge_and_unload()
    return atomic_directory_write(target, lambda tmp: save_model(tmp, plain, tokenizer, weights))
