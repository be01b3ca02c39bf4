"""PPO with a learned critic (``ppo_gae``) in the trainer: the critic reads V(s_t) where
transformers' own classifier would score the prefix before token t, packed as padded; a run
learns and its critic fits the returns; micro-batching changes neither model; a checkpoint
holds the critic and resumes exactly; the run folder's critic/ is a plain sequence classifier
the next run starts from; a bad setting is one line. (Two DDP workers and FSDP2 shards = one
process: test_distributed.py; the step's device audit and float64 DDP exactness:
device_cases.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_online import make_config

from alignlib.cli import main
from alignlib.config import load_config
from alignlib.device import Placement
from alignlib.models import load_model_and_tokenizer
from alignlib.trainer.loop import Trainer
from alignlib.trainer.packing import pack, unpack
from alignlib.trainer.scores import packed_token_values
from alignlib.trainer.step import HostRows, LogprobKernel

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = Placement.resolve("cpu", "fp32")


def critic_rows() -> tuple[torch.nn.Module, HostRows]:
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer("tiny:llama", head="score")
    model.double()
    tokenizer.padding_side = "right"  # as the collators write training rows
    texts = ["What is 2 + 3? 5", "Hi there", "A longer row of several words here"]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    scored = encoded["attention_mask"].clone()
    scored[:, :2] = 0  # prompt columns
    return model, HostRows(encoded["input_ids"], encoded["attention_mask"], scored)


def test_values_are_what_the_classifier_scores_for_the_prefix_before_each_token() -> None:
    model, rows = critic_rows()
    values = LogprobKernel(model, CPU, values=True)(rows, torch.arange(3), grad=False).logprobs
    lengths = rows.attention.sum(-1).tolist()
    with torch.no_grad():
        for row, length in enumerate(lengths):
            for t in range(2, length):  # V(s_t): the prompt and tokens before t
                prefix = rows.input_ids[row : row + 1, :t]
                want = model(input_ids=prefix).logits.squeeze()
                assert abs(float(values[row, t]) - float(want)) < 1e-10, (row, t)


@pytest.mark.parametrize("route", ["rows", "block-mask"])
def test_packed_values_and_gradients_equal_the_padded_ones(route: str) -> None:
    model, rows = critic_rows()
    order = torch.tensor([2, 0, 1])
    weights = torch.randn(3, rows.input_ids.shape[1], dtype=torch.float64)

    def values_and_grads(packing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        kernel = LogprobKernel(model, CPU, packing=packing, values=True)
        if route == "block-mask" and packing:
            packed = pack(rows.input_ids[order], rows.attention[order], rows.scored[order])
            flat = packed_token_values(model, packed.input_ids, packed.position_ids, packed.scored)
            values = unpack(flat, packed, packed.max_length)
        else:
            values = kernel(rows, order).logprobs
        read = rows.scored[order, : values.shape[1]].to(values.dtype)
        (values * read * weights[:, : values.shape[1]]).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return (values * read).detach(), grads

    (padded, padded_grads), (packed, packed_grads) = values_and_grads(False), values_and_grads(True)
    torch.testing.assert_close(packed, padded, rtol=1e-12, atol=1e-12)
    assert padded_grads.keys() == packed_grads.keys() and "score.weight" in padded_grads
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)


def ppo_config(tmp: Path, name: str, **sections: Any) -> Path:
    settings: dict[str, Any] = {
        "algorithm": {"name": "ppo_gae"},
        "train": {"max_steps": 10, "seed": 0},
        "rollout": {"n": 8, "max_new_tokens": 4},
        "online": {"prompts_per_step": 4, "micro_batch_size": 16, "mini_batches": 2},
        "critic": {"optim": {"lr": 1e-2}},
    }
    for key, values in sections.items():
        settings[key] = {**settings.get(key, {}), **values}
    return make_config(tmp, name, **settings)


def test_ppo_learns_and_its_critic_fits_a_known_value(tmp_path: Path) -> None:
    run = Trainer(load_config(ppo_config(tmp_path, "learns"))).train()
    rewards = [h["rollout/reward_mean"] for h in run.history if "rollout/reward_mean" in h]
    assert sum(rewards[-3:]) / 3 > 1.5 * sum(rewards[:3]) / 3, rewards
    assert {"critic/value_loss", "critic/explained_variance", "ppo/clipfrac"} <= set(
        run.history[-1]
    )
    # Every completion earns 1 and nothing else counts (no KL, λ = 1): every state's value is
    # 1, and the critic learns it from an untrained head.
    extra = {
        "algorithm": {"name": "ppo_gae", "params": {"kl_coef": 0.0, "lam": 1.0}},
        "online": {"rewards": [{"name": "online_rewards:one"}]},
        "critic": {"optim": {"lr": 1e-3}},
    }
    fit = Trainer(load_config(ppo_config(tmp_path, "constant", **extra))).train()
    values = [h["critic/values"] for h in fit.history if "critic/values" in h]
    losses = [h["critic/value_loss"] for h in fit.history if "critic/value_loss" in h]
    assert abs(values[0] - 1) > 0.5 and abs(values[-1] - 1) < 0.1, values
    assert losses[-1] < 0.05 * losses[0], losses


def test_micro_batching_changes_neither_model(tmp_path: Path) -> None:
    """By rows, or packed by a token budget: the same policy and the same critic."""
    runs = {}
    for name, online, train in [
        ("whole", {"micro_batch_size": 16}, {}),
        ("split", {"micro_batch_size": 3}, {}),
        ("packed", {"micro_batch_size": 16}, {"packing": True, "max_tokens_per_micro_batch": 40}),
    ]:
        lr = {"lr": 1e-3}  # AdamW's first steps move near-zero coordinates by ±lr: fp32 order
        train = {"max_steps": 2, **train}
        path = ppo_config(
            tmp_path, name, train=train, online=online, optim=lr, critic={"optim": lr}
        )
        runs[name] = Trainer(load_config(path)).train().output_dir
    for folder in ("final", "critic"):
        a = load_file(runs["whole"] / folder / "model.safetensors")
        for other in ("split", "packed"):
            b = load_file(runs[other] / folder / "model.safetensors")
            assert a.keys() == b.keys()
            for key in a:
                moved = (a[key] - b[key]).norm() / a[key].norm().clamp_min(1e-12)
                # fp32 summation order moves them by ≤ 6e-6 (AdamW turns a near-zero gradient
                # coordinate's noise into a step of up to ±lr); normalizers taken per
                # micro-batch instead of per mini-batch moved them by 5e-3 to 8e-2.
                assert moved < 5e-5, f"{other}: {folder} {key}: {moved:.2e}"


def test_a_checkpoint_holds_the_critic_and_resumes_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = {"every": 2}
    straight = Trainer(load_config(ppo_config(tmp_path, "straight", checkpoint=checkpoint)))
    want = straight.train().history
    path = ppo_config(tmp_path, "resumed", checkpoint=checkpoint, train={"max_steps": 4})
    Trainer(load_config(path)).train()
    assert (tmp_path / "resumed" / "checkpoints" / "step-0000002" / "critic").is_dir()
    got = Trainer(load_config(path, ["train.max_steps=10", "checkpoint.resume=true"])).train()
    assert got.history[0]["step"] == 5  # from the last step's checkpoint: extending a run
    for a, b in zip(want[4:], got.history, strict=True):
        for key in ("loss", "critic/value_loss", "critic/values", "rollout/reward_mean"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (key, b["step"])
    # A checkpoint whose critic is gone (a partial copy) cannot resume it: one line.
    broken = ppo_config(tmp_path, "broken", checkpoint=checkpoint, train={"max_steps": 3})
    Trainer(load_config(broken)).train()
    shutil.rmtree(tmp_path / "broken" / "checkpoints" / "step-0000002" / "critic")
    capsys.readouterr()
    assert main(["train", str(broken), "checkpoint.resume=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no critic" in err[0], err


def test_the_run_folder_critic_starts_the_next_run(tmp_path: Path) -> None:
    first = Trainer(load_config(ppo_config(tmp_path, "first", train={"max_steps": 2}))).train()
    from transformers import AutoModelForSequenceClassification

    folder = first.output_dir / "critic"
    critic = AutoModelForSequenceClassification.from_pretrained(folder)
    saved = load_file(folder / "model.safetensors")
    assert torch.equal(critic.score.weight.detach(), saved["score.weight"])
    path = ppo_config(
        tmp_path, "second", train={"max_steps": 1}, critic={"name_or_path": str(folder)}
    )
    trainer = Trainer(load_config(path))
    state = trainer.state(trainer.source())
    assert state.critic is not None
    assert torch.equal(state.critic.model.score.weight.detach(), saved["score.weight"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["algorithm.params.lam=1.5"], "lam"),
        (["algorithm.params.value_clip=0"], "clip"),
        (["critic.name_or_path=/no/such/critic"], "critic.name_or_path"),
    ],
)
def test_what_a_critic_cannot_do_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], expected: str
) -> None:
    path = ppo_config(tmp_path, "refused")
    assert main(["train", str(path), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_a_critic_section_without_a_critic_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_config(tmp_path, critic={"optim": {"lr": 1e-3}}, train={"max_steps": 1})
    result = Trainer(load_config(path)).train()
    assert "critic: has no effect: algorithm grpo trains no critic" in capsys.readouterr().err
    assert not (result.output_dir / "critic").exists()
    assert json.loads((result.output_dir / "metrics.jsonl").read_text().splitlines()[0])
