"""Policy and reference models: transformers models, optional LoRA through peft."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignlib.config.schema import LoRAConfig, ModelConfig
from alignlib.device import Placement

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_policy(
    config: ModelConfig, placement: Placement
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model named by ``config.name_or_path`` (``tiny:llama`` is a random tiny model), on
    ``placement.device`` with parameters in ``placement.param_dtype``."""
    from alignlib.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(
        config.name_or_path,
        dtype=placement.param_dtype,
        device=placement.device,
        attn_implementation=config.attn_implementation,
    )
    if config.gradient_checkpointing:
        # transformers 5 renamed it (the old name warns); 4.x has only the old one.
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
    if config.compile:
        # The kernel calls the decoder directly (the LM head runs in chunks), so compile that.
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        decoder.compile(dynamic=True)
    return model, tokenizer


def apply_lora(model: PreTrainedModel, config: LoRAConfig) -> nn.Module:
    """Wrap ``model`` with a trainable LoRA adapter (the base weights stay frozen)."""
    from peft import LoraConfig, get_peft_model

    target = config.target_modules
    if isinstance(target, list):
        check_lora_targets(model, target)
    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=target if isinstance(target, list) else "all-linear",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft (0.21) reads transformers' deprecated `is_gradient_checkpointing`: one
        # FutureWarning per run that the user can do nothing about. Only that one is hidden.
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        return get_peft_model(model, lora)


def linear_layer_names(model: nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers (q_proj, ..., lm_head), in order
    (transformers' Conv1D, GPT-2's linear layer, counts too)."""
    from transformers.pytorch_utils import Conv1D

    modules = model.named_modules()
    names = [n.rsplit(".", 1)[-1] for n, m in modules if isinstance(m, (nn.Linear, Conv1D))]
    return list(dict.fromkeys(names))


def check_lora_targets(model: nn.Module, targets: list[str]) -> None:
    """Every `lora.target_modules` entry names a module (peft matches the full name or its
    dotted suffix); a typo is one line listing the linear layers there are."""
    names = [name for name, _ in model.named_modules()]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in names):
            where = getattr(model, "name_or_path", "") or type(model).__name__
            raise ValueError(
                f"lora.target_modules: no module named {target} in {where}; its linear layers "
                f"are: {', '.join(linear_layer_names(model))}"
            )


def frozen_copy(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A frozen, eval-mode copy used as the reference (or previous-iterate) policy, on the
    policy's device; in ``dtype`` when given (bf16-mixed stores frozen copies in bf16)."""
    ref = copy.deepcopy(model).eval()
    if dtype is not None:
        ref = ref.to(dtype)
    for param in ref.parameters():
        param.requires_grad_(False)
    return ref


def adapter_disabled(model: nn.Module) -> AbstractContextManager:
    """Context in which a peft model runs as its base model (the LoRA reference)."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if disable is not None else nullcontext()


def reference_policy(
    model: nn.Module, lora: bool, placement: Placement
) -> tuple[nn.Module, Callable[[], AbstractContextManager] | None]:
    """π_ref = the initial policy, taken before any update: with LoRA the policy itself under
    the context that disables the adapter (no copy), else a frozen copy (in the compute dtype
    under bf16-mixed: it takes no update)."""
    if lora:
        return model, lambda: adapter_disabled(model)
    return frozen_copy(model, placement.frozen_dtype), None


def adapter_context(model: nn.Module) -> Callable[[], AbstractContextManager]:
    """The context in which a peft ``model`` computes its base model (the LoRA reference)."""
    return lambda: adapter_disabled(model)
