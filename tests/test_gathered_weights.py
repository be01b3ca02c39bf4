"""A gathered (FSDP2) LoRA state dict becomes plain Hugging Face weights by name (the rollout
engine's, and a sharded run's merged/ folder): merged exactly as peft's own merge_and_unload
(float64), or the base weights alone (adapter sync) as peft's unload; a reward model's score
head, which peft trains whole (modules_to_save), is its trained copy either way, as peft leaves
it. The unsharded path (policy_weights) names and values them alike."""

from __future__ import annotations

import copy

import pytest
import torch

from alignlib.config.schema import LoRAConfig
from alignlib.models import load_model_and_tokenizer
from alignlib.testing import build_tiny_model, build_tokenizer
from alignlib.trainer.model import apply_lora
from alignlib.trainer.weights import plain_weights, policy_weights

HEADS = ["lm", "score"]


def lora_model(head: str = "lm") -> torch.nn.Module:
    torch.manual_seed(0)
    if head == "score":  # a reward model: LoRA on the decoder, the score head trained whole
        base = load_model_and_tokenizer("tiny:llama", head="score")[0].double()
    else:
        base = build_tiny_model(build_tokenizer(), hidden=32, layers=2, dtype=torch.float64)
    model = apply_lora(base, LoRAConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():  # B starts at zero, and the head's copy equals its original: move
        for name, param in model.named_parameters():  # what training moves
            if "lora_B" in name or "modules_to_save" in name:
                param.normal_()
    return model


@pytest.mark.parametrize("head", HEADS)
def test_merged_names_and_values_equal_peft_merge_and_unload(head: str) -> None:
    model = lora_model(head)
    gathered = {k: v.clone() for k, v in model.state_dict().items()}
    got = plain_weights(model, gathered, merge=True)
    want = copy.deepcopy(model).merge_and_unload().state_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-12, msg=key)
    adapted = plain_weights(model, gathered, merge=True, adapted_only=True)
    assert adapted and set(adapted) < set(want) and "lm_head.weight" not in adapted
    assert ("score.weight" in adapted) == (head == "score")  # trained: it goes to the engine
    unsharded = policy_weights(model, adapted_only=False)
    assert unsharded.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(unsharded[key], value, rtol=0, atol=1e-12, msg=key)
    assert policy_weights(model).keys() == adapted.keys()


@pytest.mark.parametrize("head", HEADS)
def test_unmerged_gives_the_base_model(head: str) -> None:
    model = lora_model(head)
    gathered = {k: v.clone() for k, v in model.state_dict().items()}
    got = plain_weights(model, gathered, merge=False)
    want = copy.deepcopy(model).unload().state_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
