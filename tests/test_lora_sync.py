"""Adapter-only LoRA sync: the engine's base folder is the frozen base model, and every sync
writes an adapter folder that, applied to that base, reproduces the trained policy exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from alignlib.rollout.base import Generation, RolloutEngine, SamplingParams
from alignlib.testing import build_tiny_model, build_tokenizer
from alignlib.trainer.online_engine import AdapterFolders, EngineHandle
from alignlib.trainer.weights import save_plain_model


class RecordingEngine(RolloutEngine):
    def __init__(self) -> None:
        self.adapters: list[str] = []
        self.weight_updates = 0

    def generate(self, prompts: object, sampling: SamplingParams) -> list[list[Generation]]:
        raise AssertionError("not used")

    def update_weights(self, weights: object) -> None:
        self.weight_updates += 1

    def load_adapter(self, path: str) -> None:
        self.adapters.append(path)


def perturb_adapter(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * 0.3)


@pytest.fixture
def policy() -> torch.nn.Module:
    tokenizer = build_tokenizer()
    base = build_tiny_model(tokenizer, seed=0, init_std=0.2)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    model = get_peft_model(base, config)
    perturb_adapter(model, seed=1)
    return model.eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(3, 19).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_base_folder_holds_the_model_without_its_adapter(policy, tmp_path: Path) -> None:
    folder = save_plain_model(policy, build_tokenizer(), tmp_path / "base", base_only=True)
    base = AutoModelForCausalLM.from_pretrained(folder)
    with policy.disable_adapter():
        want = logits(policy)
    torch.testing.assert_close(logits(base), want, atol=1e-6, rtol=0)
    assert (logits(policy) - want).abs().max() > 1e-2, "the adapter must matter in this test"
    assert any("lora_" in n for n, _ in policy.named_parameters()), "the policy keeps its LoRA"


def test_each_sync_writes_an_adapter_that_reproduces_the_policy(policy, tmp_path: Path) -> None:
    folder = save_plain_model(policy, build_tokenizer(), tmp_path / "base", base_only=True)
    engine = RecordingEngine()
    handle = EngineHandle(engine, AdapterFolders(tmp_path / "adapter"))
    for step in range(3):
        perturb_adapter(policy, seed=10 + step)  # an optimizer step
        handle.sync(policy)
        served = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(folder), engine.adapters[-1]
        ).eval()
        torch.testing.assert_close(logits(served), logits(policy), atol=1e-5, rtol=0)
    assert engine.weight_updates == 0, "no merged weights are sent in adapter mode"
    assert len(set(engine.adapters)) == 3, "a new folder per sync (engines cache by id)"
    kept = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert kept == ["v000002", "v000003"], "older versions are pruned"


def test_engines_without_adapter_support_say_what_to_do() -> None:
    from alignlib.rollout.hf_engine import HFEngine

    engine = HFEngine(build_tiny_model(build_tokenizer()), build_tokenizer())
    with pytest.raises(ValueError, match="lora_sync: merged"):
        engine.load_adapter("somewhere")
