"""Policy and reference models: transformers models, optional LoRA through peft."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignlib.config.schema import LoRAConfig, ModelConfig
from alignlib.device import Placement
from alignlib.trainer.scores import scalar_head

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_policy(
    config: ModelConfig,
    placement: Placement,
    head: Literal["lm", "score"] = "lm",
    key: str = "model.name_or_path",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model named by ``config.name_or_path`` (``tiny:llama`` is a random tiny model), on
    ``placement.device`` with parameters in ``placement.param_dtype``; ``head="score"`` puts
    a one-output sequence-classification head on it (a reward model or a critic to train);
    ``key``: the setting errors name."""
    from alignlib.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(
        config.name_or_path,
        dtype=placement.param_dtype,
        device=placement.device,
        attn_implementation=config.attn_implementation,
        key=key,
        head=head,
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
    """Wrap ``model`` with a trainable LoRA adapter (the base weights stay frozen; a reward
    model's new score head is trained whole, as peft's sequence-classification task does)."""
    from peft import LoraConfig, get_peft_model

    target = config.target_modules
    if isinstance(target, list):
        check_lora_targets(model, target)
    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=target if isinstance(target, list) else "all-linear",
        task_type="SEQ_CLS" if scalar_head(model) is not None else "CAUSAL_LM",
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
    model: nn.Module,
    config: ModelConfig,
    lora: bool,
    placement: Placement,
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[nn.Module, Callable[[], AbstractContextManager] | None]:
    """π_ref: the model ``config.reference_name_or_path`` names when set; else the initial
    policy, taken before any update: with LoRA the policy itself under the context that
    disables the adapter (no copy), else a frozen copy (in the compute dtype under bf16-mixed:
    it takes no update)."""
    if config.reference_name_or_path is not None:
        return load_reference(config, placement, tokenizer), None
    if lora:
        return model, lambda: adapter_disabled(model)
    return frozen_copy(model, placement.frozen_dtype), None


def load_reference(
    config: ModelConfig, placement: Placement, tokenizer: PreTrainedTokenizerBase
) -> nn.Module:
    """The frozen model ``model.reference_name_or_path`` names (a model folder, a run folder —
    a LoRA run's adapter merged onto its base — or a named model), on the run's device in the
    frozen dtype; refused with one line unless its tokenizer is the policy's."""
    from alignlib.eval.loading import load_eval_model

    assert config.reference_name_or_path is not None
    key = "model.reference_name_or_path"
    model, own = load_eval_model(  # a LoRA run's adapter is merged onto its base
        config.reference_name_or_path,
        placement.frozen_dtype,
        placement.device,
        key,
        config.attn_implementation,
    )
    check_same_tokenizer(tokenizer, own, f"{key}: {config.reference_name_or_path}")
    return model.eval().requires_grad_(False)


def check_same_tokenizer(
    policy: PreTrainedTokenizerBase, other: PreTrainedTokenizerBase, where: str
) -> None:
    """π_ref scores the policy's token ids, so both must map text to the same ids."""
    mine, theirs = policy.get_vocab(), other.get_vocab()
    if mine == theirs:
        return
    differing = sorted(t for t in mine.keys() | theirs.keys() if mine.get(t) != theirs.get(t))
    token = differing[0]
    there, here = (f"id {ids[token]}" if token in ids else "absent" for ids in (theirs, mine))
    raise ValueError(
        f"{where}: its tokenizer differs from the policy's ({len(theirs)} vs {len(mine)} "
        f"tokens, {len(differing)} mapped differently: {token!r} is {there} there, {here} in the "
        "policy's); a reference or teacher scores the policy's token ids, so give a model with "
        "the policy's tokenizer (the same model family)"
    )


def adapter_context(model: nn.Module) -> Callable[[], AbstractContextManager]:
    """The context in which a peft ``model`` computes its base model (the LoRA reference)."""
    return lambda: adapter_disabled(model)
