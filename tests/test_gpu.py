"""On a CUDA device (marker `gpu`, skipped without one): every step kind gives the CPU's loss and
gradients in fp32; a bf16-mixed run learns; resume, LoRA and eval work with the model on the GPU.
The step cases are tests/device_cases.py, which the CPU suite also runs (test_device.py).
ALIGNLIB_TEST_ACCELERATOR=cpu runs these on the CPU: a rehearsal of the tests' own code, which
proves nothing about CUDA."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from device_cases import ACCELERATOR, CASES, run_case, write_config

from alignlib.config import load_config
from alignlib.eval.config import EvalConfig
from alignlib.eval.loading import load_eval_model
from alignlib.eval.runner import evaluate
from alignlib.testing import build_tiny_model, build_tokenizer
from alignlib.trainer.loop import Trainer

pytestmark = pytest.mark.gpu


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm().clamp_min(1e-12))


@pytest.mark.parametrize("case", CASES)
def test_cuda_step_equals_cpu_step_in_fp32(tmp_path: Path, case: str) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "accelerator").mkdir()
    cpu, cpu_grads, _ = run_case(tmp_path / "cpu", case, "cpu")
    cuda, cuda_grads, where = run_case(tmp_path / "accelerator", case, ACCELERATOR)
    assert where.type == ACCELERATOR
    assert cuda["loss"] == pytest.approx(cpu["loss"], rel=1e-4, abs=1e-6)
    assert cuda_grads.keys() == cpu_grads.keys()
    worst = max(relative_error(cuda_grads[k], g) for k, g in cpu_grads.items() if g.norm() > 0)
    assert worst < 1e-4, f"{case}: largest relative gradient difference {worst:.2e}"


def test_bf16_mixed_run_learns_on_cuda(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dpo", ACCELERATOR, precision="bf16-mixed")
    trainer = Trainer(load_config(path, ["train.max_steps=8", "optim.lr=3e-3"]))
    params = list(trainer.model.parameters())
    assert {p.device.type for p in params} == {ACCELERATOR}
    assert {p.dtype for p in params} == {torch.float32}, "fp32 master weights"
    result = trainer.train()
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] - 0.05, losses
    assert (result.output_dir / "final" / "config.json").is_file()


def test_resume_on_cuda_continues_the_run(tmp_path: Path) -> None:
    steps = ["train.max_steps=4", "checkpoint.every=2", "optim.lr=3e-3"]
    full = Trainer(load_config(write_config(tmp_path, "sft", ACCELERATOR), steps)).train()
    second = tmp_path / "resumed"
    second.mkdir()
    step2 = Path("checkpoints") / "step-0000002"  # as if stopped after step 3
    shutil.copytree(full.output_dir / step2, second / step2)
    overrides = [*steps, f"output_dir={second}", "checkpoint.resume=true"]
    resumed = Trainer(load_config(write_config(tmp_path, "sft", ACCELERATOR), overrides)).train()
    want = [h["loss"] for h in full.history[2:]]
    got = [h["loss"] for h in resumed.history]
    assert got == pytest.approx(want, rel=1e-5)


def test_lora_trains_on_cuda(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dpo", ACCELERATOR)
    overrides = ["lora.enabled=true", "lora.r=4", "train.max_steps=6", "optim.lr=1e-2"]
    trainer = Trainer(load_config(path, overrides))
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trainable and {p.device.type for p in trainable} == {ACCELERATOR}
    result = trainer.train()
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] - 0.02, losses
    assert (result.output_dir / "final" / "adapter_config.json").is_file()


def test_eval_runs_on_cuda_like_on_cpu(tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    folder = tmp_path / "model"
    build_tiny_model(tokenizer, init_std=0.2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model, _ = load_eval_model(str(folder), "float32", torch.device(ACCELERATOR))
    assert next(model.parameters()).device.type == ACCELERATOR
    greedy: dict[str, list[str]] = {}
    for side, device in (("cpu", "cpu"), ("accelerator", ACCELERATOR)):
        config = EvalConfig(
            model=str(folder),
            benchmarks=["gsm8k"],
            limit=4,
            max_new_tokens=8,
            dtype="float32",
            device=device,
            output_dir=str(tmp_path / f"eval-{side}"),
        )
        records = evaluate(config).records["gsm8k"]
        assert len(records) == 4 and all(r["greedy"] is not None for r in records)
        greedy[side] = [json.dumps(r["greedy"], sort_keys=True) for r in records]
    same = sum(a == b for a, b in zip(greedy["cpu"], greedy["accelerator"], strict=True))
    assert same >= 3, "greedy decoding on the GPU should match the CPU's (fp32) but for a rare tie"


def test_learned_rewards_score_on_cuda_as_on_cpu(tmp_path: Path) -> None:
    from test_process_rewards import tiny_head_model
    from transformers import LlamaForSequenceClassification, LlamaForTokenClassification

    from alignlib.rewards.learned import LearnedReward

    prompts = ["What is 2 + 3?", "Add 4 and 4."]
    completions = ["2 + 3 = 5\nso \\boxed{5}", "4 + 4 = 8\n\\boxed{8}"]
    for name, kind, labels, extra in (
        ("reward_model", LlamaForSequenceClassification, 1, {}),
        ("process_reward_model", LlamaForTokenClassification, 2, {"reduce": "steps"}),
    ):
        params = {"path": str(tiny_head_model(tmp_path, kind, labels)), **extra}
        scores = {}
        for device, dtype in (("cpu", "float32"), (ACCELERATOR, "float32"), (ACCELERATOR, "auto")):
            reward = LearnedReward.checked(
                name, {**params, "dtype": dtype}, "test", torch.device(device)
            )
            scores[device, dtype] = reward.score(prompts, completions)
            assert next(reward.load().model.parameters()).device.type == device
        cpu, same = scores["cpu", "float32"], scores[ACCELERATOR, "float32"]
        assert same[0] == pytest.approx(cpu[0], rel=1e-4, abs=1e-5), name
        for steps, want in zip(same[1] or [], cpu[1] or [], strict=True):  # PRM steps
            assert [end for end, _ in steps] == [end for end, _ in want]
            assert [v for _, v in steps] == pytest.approx([v for _, v in want], abs=1e-5)
        auto = scores[ACCELERATOR, "auto"][0]  # bfloat16 on CUDA: close, not equal
        assert auto == pytest.approx(cpu[0], abs=0.05), name
