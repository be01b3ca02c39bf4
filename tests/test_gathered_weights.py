"""A gathered (FSDP2) LoRA state dict becomes the rollout engine's weights by name: merged
exactly as peft's own merge_and_unload (float64), or the base weights alone (adapter sync)."""

from __future__ import annotations

import copy

import torch

from alignlib.config.schema import LoRAConfig
from alignlib.testing import build_tiny_model, build_tokenizer
from alignlib.trainer.model import apply_lora
from alignlib.trainer.online_engine import plain_weights


def lora_model() -> torch.nn.Module:
    torch.manual_seed(0)
    base = build_tiny_model(build_tokenizer(), hidden=32, layers=2, dtype=torch.float64)
    model = apply_lora(base, LoRAConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():  # B starts at zero: give the adapter something to merge
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    return model


def test_merged_names_and_values_equal_peft_merge_and_unload() -> None:
    model = lora_model()
    gathered = {k: v.clone() for k, v in model.state_dict().items()}
    got = plain_weights(model, gathered, merge=True)
    want = copy.deepcopy(model).merge_and_unload().state_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-12, msg=key)
    adapted = plain_weights(model, gathered, merge=True, adapted_only=True)
    assert adapted and set(adapted) < set(want) and "lm_head.weight" not in adapted


def test_unmerged_gives_the_base_model() -> None:
    model = lora_model()
    gathered = {k: v.clone() for k, v in model.state_dict().items()}
    got = plain_weights(model, gathered, merge=False)
    want = copy.deepcopy(model).unload().state_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
