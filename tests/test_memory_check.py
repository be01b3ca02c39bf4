"""The GPU memory check: the training state's bytes against an independent count, and a run
whose state cannot fit its GPU refused in one line (the GPU's size faked: it runs on a CPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import alignlib.trainer.memory as memory
from alignlib.config.schema import LoRAConfig
from alignlib.device import Placement
from alignlib.testing import build_tiny_model, build_tokenizer
from alignlib.trainer.model import apply_lora
from alignlib.trainer.world import SINGLE, World


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return build_tiny_model(build_tokenizer())


def count(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts, taken from the state dict's tensors by name."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    seen: dict[int, str] = {}
    sizes = {"t": 0, "f": 0}
    for name, p in model.named_parameters():
        if p.data_ptr() in seen:  # tied weights count once, as the optimizer sees them
            continue
        seen[p.data_ptr()] = name
        sizes["t" if name in trainable else "f"] += p.numel()
    return sizes["t"], sizes["f"]


def test_full_fine_tuning_in_fp32_keeps_16_bytes_per_parameter(tiny: torch.nn.Module) -> None:
    trainable, frozen = count(tiny)
    assert frozen == 0 and trainable > 0
    assert memory.state_bytes(tiny) == 16 * trainable
    assert memory.state_bytes(tiny, shards=4) == 16 * trainable // 4


def test_bf16_weights_halve_it(tiny: torch.nn.Module) -> None:
    half = build_tiny_model(build_tokenizer()).to(torch.bfloat16)
    assert memory.state_bytes(half) == 8 * count(half)[0]


def test_lora_counts_the_frozen_base_once(tiny: torch.nn.Module) -> None:
    adapted = apply_lora(build_tiny_model(build_tokenizer()), LoRAConfig(enabled=True, r=4))
    trainable, frozen = count(adapted)
    assert 0 < trainable < frozen
    assert memory.state_bytes(adapted) == 16 * trainable + 4 * frozen


def test_a_state_larger_than_the_gpu_is_one_line_naming_the_fixes(tiny: torch.nn.Module) -> None:
    need = memory.state_bytes(tiny)
    assert memory.memory_problem(tiny, "org/model", need) is None
    line = memory.memory_problem(tiny, "org/model", need - 1)
    assert line is not None and "\n" not in line
    for part in ("model.name_or_path org/model", "lora.enabled: true", "strategy: fsdp2"):
        assert part in line
    assert memory.memory_problem(tiny, "org/model", need // 2, shards=2) is None


def fake_gpu(monkeypatch: pytest.MonkeyPatch, total: int) -> Placement:
    props = SimpleNamespace(total_memory=total)
    monkeypatch.setattr(memory.torch.cuda, "get_device_properties", lambda device: props)
    return Placement(torch.device("cuda"), "bf16-mixed")


def test_check_fits_refuses_warns_or_passes(
    tiny: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    need = memory.state_bytes(tiny)
    with pytest.raises(ValueError, match="more than the GPU's"):
        memory.check_fits(tiny, "m", fake_gpu(monkeypatch, need // 2), SINGLE)
    with pytest.warns(UserWarning, match="gradient_checkpointing"):
        memory.check_fits(tiny, "m", fake_gpu(monkeypatch, int(need / 0.95)), SINGLE)
    memory.check_fits(tiny, "m", fake_gpu(monkeypatch, 2 * need), SINGLE)  # fits: silent
    # FSDP2 over two ranks holds half the state on each
    memory.check_fits(tiny, "m", fake_gpu(monkeypatch, need * 6 // 10), World(0, 2, True))


def test_a_critic_must_fit_beside_its_policy(
    tiny: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    need = memory.state_bytes(tiny)
    gpu = fake_gpu(monkeypatch, need * 3 // 2)
    memory.check_fits(tiny, "m", gpu, SINGLE, "critic.name_or_path")  # alone it fits
    with pytest.raises(ValueError) as error:
        memory.check_fits(tiny, "c", gpu, SINGLE, "critic.name_or_path", beside=tiny)
    line = str(error.value)
    assert line.startswith("critic.name_or_path c:") and "beside the policy's" in line
    assert "\n" not in line


def test_nothing_is_checked_on_a_cpu(tiny: torch.nn.Module) -> None:
    memory.check_fits(tiny, "m", Placement(torch.device("cpu"), "fp32"), SINGLE)
