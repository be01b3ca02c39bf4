"""TR-DPO's moving reference (`train.reference_sync`): the mix is TRL's own, checked against a
float64 closed form over a run's saved weights; a hard sync every step keeps DPO's margin at 0;
a resumed run continues with the moved reference exactly; online, the KL to a reference synced
every step is 0; misuse is one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignlib.config import ConfigError, load_config
from alignlib.config.schema import ModelConfig, ReferenceSyncConfig
from alignlib.device import Placement
from alignlib.trainer.loop import Trainer
from alignlib.trainer.model import load_policy
from alignlib.trainer.reference_sync import ReferenceSync, matched_parameters, mix_into
from tests.test_online import make_config as online_config
from tests.test_trainer import config_file, datasets, interrupted_then_resumed

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = Placement.resolve("cpu", "fp32")


def tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = load_policy(ModelConfig(name_or_path="tiny:llama"), CPU)[0]
    with torch.no_grad():  # weights that differ from the other model's everywhere
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model


@pytest.mark.parametrize("alpha", [0.6, 0.25, 1.0])
def test_the_mix_is_trls_and_the_closed_form(alpha: float) -> None:
    from trl.trainer.callbacks import SyncRefModelCallback

    policy, reference = tiny(0), tiny(1)
    before = {k: v.detach().double().clone() for k, v in reference.named_parameters()}
    theirs = tiny(1)
    mix_into(matched_parameters(policy, reference), alpha)
    SyncRefModelCallback._sync_target_model(policy, theirs, alpha)
    own = dict(policy.named_parameters())
    for (name, ours), trl in zip(reference.named_parameters(), theirs.parameters(), strict=True):
        assert torch.equal(ours, trl), name
        want = alpha * own[name].detach().double() + (1 - alpha) * before[name]
        assert torch.allclose(ours.double(), want, rtol=0, atol=1e-7), name
        if alpha == 1.0:
            assert torch.equal(ours, own[name]), name


def test_the_reference_moves_on_every_nth_optimizer_step() -> None:
    policy, reference = tiny(0), tiny(1)
    sync = ReferenceSync(ReferenceSyncConfig(every=3, alpha=0.5), policy, reference)
    moved = [sync.after_update() for _ in range(7)]
    assert moved == [False, False, True, False, False, True, False]
    assert sync.state_dict() == {"updates": 7}


def test_a_reference_of_another_shape_is_one_line() -> None:
    other = tiny(1)
    other.model.norm.weight = torch.nn.Parameter(torch.ones(3))  # another width
    with pytest.raises(ConfigError, match=r"differ from the policy's \(first: model.norm"):
        matched_parameters(tiny(0), other)


def dpo_run(tmp: Path, name: str, train: dict, **sections: dict) -> Path:
    (tmp / name).mkdir()
    data = datasets(tmp)["preference"]
    return config_file(tmp / name, data, "dpo", train={"max_steps": 4, **train}, **sections)


def test_a_live_reference_equals_the_precomputed_one(tmp_path: Path) -> None:
    cached = Trainer(load_config(dpo_run(tmp_path, "a", {}))).train()
    live = Trainer(load_config(dpo_run(tmp_path, "b", {"reference": "live"}))).train()
    for want, got in zip(cached.history, live.history, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-6)
        assert got["dpo/margin"] == pytest.approx(want["dpo/margin"], abs=1e-5)


def test_a_hard_sync_every_step_keeps_dpo_at_its_start(tmp_path: Path) -> None:
    """π_ref ← π_θ after every step: each step starts with log π_θ/π_ref = 0, so DPO's loss is
    log 2 and its margin 0 at every step; a fixed reference leaves them after step 1."""
    sync = {"reference": "live", "reference_sync": {"every": 1, "alpha": 1.0}}
    synced = Trainer(load_config(dpo_run(tmp_path, "a", sync))).train()
    fixed = Trainer(load_config(dpo_run(tmp_path, "b", {"reference": "live"}))).train()
    for record in synced.history:
        assert record["loss"] == pytest.approx(math.log(2), abs=1e-6), record["step"]
        assert record["dpo/margin"] == pytest.approx(0, abs=1e-5), record["step"]
    assert all(r["loss"] < math.log(2) - 1e-3 for r in fixed.history[1:])


def saved(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in load_file(folder / "model.safetensors").items()}


def test_the_saved_reference_is_the_closed_form_of_the_policy_iterates(tmp_path: Path) -> None:
    """every 2, α = 0.5: π_ref at step 2 is ½θ₂ + ½θ₀, at step 4 ½θ₄ + ½(½θ₂ + ½θ₀), each
    checked in float64 against the checkpointed policies."""
    sync = {"reference": "live", "reference_sync": {"every": 2, "alpha": 0.5}, "max_steps": 5}
    config = load_config(dpo_run(tmp_path, "a", sync, checkpoint={"every": 2}))
    Trainer(config).train()
    checkpoints = Path(config.output_dir) / "checkpoints"
    policy = {s: saved(checkpoints / f"step-000000{s}") for s in (2, 4)}
    reference = {s: saved(checkpoints / f"step-000000{s}" / "reference") for s in (2, 4)}
    torch.manual_seed(config.train.seed)
    initial = {
        k: v.detach().double()
        for k, v in load_policy(config.model, CPU)[0].state_dict().items()
        if k in policy[2]
    }
    assert set(initial) == set(policy[2]) == set(reference[4])
    for name, theta0 in initial.items():
        at2 = 0.5 * policy[2][name] + 0.5 * theta0
        at4 = 0.5 * policy[4][name] + 0.5 * at2
        assert torch.allclose(reference[2][name], at2, rtol=0, atol=1e-6), name
        assert torch.allclose(reference[4][name], at4, rtol=0, atol=1e-6), name
    assert not torch.allclose(policy[4]["model.norm.weight"], policy[2]["model.norm.weight"])


def test_resume_continues_with_the_moved_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = {"reference": "live", "reference_sync": {"every": 2, "alpha": 0.5}, "max_steps": 6}
    straight = Trainer(load_config(dpo_run(tmp_path, "a", sync, checkpoint={"every": 3}))).train()
    config = dpo_run(tmp_path, "b", sync, checkpoint={"every": 3})
    interrupted_then_resumed(config, monkeypatch, at_update=4)
    lines = (tmp_path / "b" / "run-dpo" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for want, got in zip(straight.history, records, strict=True):
        for key in ("loss", "grad_norm", "dpo/margin"):
            assert got[key] == want[key], (key, got["step"])


def test_online_kl_to_a_reference_synced_every_step_is_zero(tmp_path: Path) -> None:
    grpo = {"name": "grpo", "params": {"kl_coef": 0.04}}
    train = {"max_steps": 3, "reference_sync": {"every": 1, "alpha": 1.0}}
    synced = Trainer(load_config(online_config(tmp_path, "a", algorithm=grpo, train=train))).train()
    fixed_train = {"max_steps": 3}
    fixed = Trainer(
        load_config(online_config(tmp_path, "b", algorithm=grpo, train=fixed_train))
    ).train()
    for record in synced.history:
        assert abs(record["kl/kl"]) < 1e-6, record["step"]
    assert fixed.history[-1]["kl/kl"] > 1e-4


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"algorithm": {"name": "sft"}}, "reads no reference log-probs"),
        ({"lora": {"enabled": True}}, "with LoRA"),
        ({"train": {"reference": "precompute"}}, "set train.reference: live"),
        ({"iterative": {"iterations": 2}}, "iterative.reference: previous"),
    ],
)
def test_misuse_is_one_line(tmp_path: Path, changes: dict, message: str) -> None:
    sections = {"train": {"reference": "live", "reference_sync": {}}}
    for key, values in changes.items():
        sections[key] = {**sections.get(key, {}), **values}
    (tmp_path / "a").mkdir()
    data = datasets(tmp_path)["sft" if "algorithm" in changes else "preference"]
    algorithm = changes.get("algorithm", {}).get("name", "dpo")
    sections.pop("algorithm", None)
    with pytest.raises(ConfigError, match=message) as raised:
        Trainer(load_config(config_file(tmp_path / "a", data, algorithm, **sections)))
    assert "\n" not in str(raised.value)


def test_true_is_trls_switch_and_false_is_off() -> None:
    from alignlib.config.schema import TrainConfig

    assert TrainConfig(reference_sync=True).reference_sync == ReferenceSyncConfig()
    assert TrainConfig(reference_sync=False).reference_sync is None
    assert TrainConfig(reference_sync={"every": 3}).reference_sync == ReferenceSyncConfig(every=3)
