"""Device and precision on CPU: the run's device is decided in one place; no training step
creates a tensor on an implicit device (audited with ``torch.device("meta")`` as the default);
bf16-mixed keeps fp32 master weights and optimizer state and still learns; the non-finite
policy; engine sleep / wake order. The same step cases run on CUDA in tests/test_gpu.py."""

from __future__ import annotations

import importlib
import math
import warnings
from pathlib import Path

import pytest
import torch
from device_cases import CASES, run_case, write_config

import alignlib.trainer.step as step_module
from alignlib.config import ConfigError, load_config
from alignlib.device import Placement, resolve_device
from alignlib.trainer.loop import Trainer
from alignlib.trainer.model import reference_policy
from alignlib.trainer.online_engine import EngineHandle
from alignlib.trainer.step import NonFiniteError, OptimizerStep

# The module, not the `collate` function that alignlib.data re-exports under the same name.
collate_module = importlib.import_module("alignlib.data.collate")


@pytest.mark.parametrize("case", CASES)
def test_no_step_creates_a_tensor_on_an_implicit_device(tmp_path: Path, case: str) -> None:
    plain, plain_grads, _ = run_case(tmp_path, case, "cpu")
    audited, audited_grads, where = run_case(tmp_path, case, "cpu", audit=True)
    assert where == torch.device("cpu")
    assert audited["loss"] == pytest.approx(plain["loss"], rel=1e-6, abs=1e-9)
    assert plain_grads.keys() == audited_grads.keys() and plain_grads
    assert any(g.abs().sum() > 0 for g in plain_grads.values()), "the step must train something"
    for name, grad in plain_grads.items():
        torch.testing.assert_close(audited_grads[name], grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    ("module", "case"), [(collate_module, "dpo"), (step_module, "grpo")], ids=["collate", "kernel"]
)
def test_the_audit_catches_a_forgotten_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: object, case: str
) -> None:
    # device=None is what forgetting the device argument amounts to.
    monkeypatch.setattr(module, "HOST", None)
    with pytest.raises((RuntimeError, NotImplementedError, IndexError)):
        run_case(tmp_path, case, "cpu", audit=True)


def test_device_is_resolved_once_with_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert Placement.resolve("auto", "auto") == Placement(torch.device("cpu"), "fp32")
    with pytest.raises(ValueError, match=r"model.device 'cuda'.*no CUDA device.*model.device=cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")


def test_config_refuses_bad_device_and_the_old_dtype_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dpo", "cpu")
    with pytest.raises(ConfigError, match=r"model.device"):
        load_config(path, ["model.device=tpu"])
    with pytest.raises(ConfigError, match=r"model.dtype was replaced by model.precision"):
        load_config(path, ["model.dtype=bfloat16"])


def test_bf16_mixed_keeps_fp32_master_weights_and_learns(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dpo", "cpu", precision="bf16-mixed")
    config = load_config(path, ["train.max_steps=6", "optim.lr=3e-3", "optim.warmup_ratio=0"])
    trainer = Trainer(config)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    reference, _ = reference_policy(
        trainer.model, trainer.config.model, False, trainer.placement, trainer.tokenizer
    )
    assert {p.dtype for p in reference.parameters()} == {torch.bfloat16}
    kernel = trainer.state(trainer.source()).kernel()
    rows = step_module.HostRows(
        torch.randint(3, 50, (2, 6)), torch.ones(2, 6, dtype=torch.long), torch.ones(2, 6)
    )
    out = kernel(rows, torch.arange(2))
    assert out.logprobs.dtype == torch.float32, "log-softmax runs in fp32 under autocast"
    result = trainer.train()
    losses = [h["loss"] for h in result.history]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-2)
    assert losses[-1] < losses[0] - 0.05, losses


def test_plain_bf16_is_an_explicit_choice(tmp_path: Path) -> None:
    trainer = Trainer(load_config(write_config(tmp_path, "sft", "cpu", precision="bf16")))
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}


def _optimizer_step(nonfinite: str) -> tuple[OptimizerStep, torch.nn.Parameter]:
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return OptimizerStep([param], optimizer, scheduler, 1.0, nonfinite=nonfinite), param


def test_nonfinite_gradient_stops_or_skips_never_silently() -> None:
    stop, param = _optimizer_step("stop")
    param.grad = torch.tensor([1.0, float("nan"), 0.0])
    with pytest.raises(NonFiniteError, match=r"step 7: the gradient norm is nan.*nonfinite=skip"):
        stop(7)
    assert torch.equal(param.detach(), torch.ones(3)), "no update from a NaN gradient"

    skip, param = _optimizer_step("skip")
    param.grad = torch.tensor([float("inf"), 0.0, 0.0])
    metrics = skip(1)
    assert metrics["skipped_steps"] == 1.0 and torch.equal(param.detach(), torch.ones(3))
    with pytest.raises(NonFiniteError, match="all 1 optimizer steps were skipped"):
        skip.check_trained(1)
    param.grad = torch.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert skip(2)["skipped_steps"] == 0.0
    skip.check_trained(2)  # one step was taken: fine
    assert param.detach().lt(1).all()


class SleepyEngine:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def sleep(self) -> None:
        self.calls.append("sleep")

    def wake_up(self) -> None:
        self.calls.append("wake")


def test_a_sleeping_engine_wakes_before_every_weight_sync() -> None:
    engine = SleepyEngine()

    def sync(engine: SleepyEngine, model: object, weights: object = None) -> None:
        engine.calls.append("sync")

    handle = EngineHandle(engine, sync, sleeps=True)  # type: ignore[arg-type]
    for _ in range(2):
        handle.release_memory()
        handle.sync(torch.nn.Linear(1, 1))
    assert engine.calls == ["sleep", "wake", "sync"] * 2
    awake = EngineHandle(SleepyEngine(), sync)  # type: ignore[arg-type]
    awake.release_memory()
    awake.sync(torch.nn.Linear(1, 1))
    assert awake.engine.calls == ["sync"]  # type: ignore[attr-defined]
