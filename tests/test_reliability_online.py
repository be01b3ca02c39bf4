"""Online runs that trained nothing (or the wrong thing) and exited 0, or waited out a timeout:
each is now refused in one line naming the key, and the legitimate variant still trains."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from test_reliability_runs import one_line, write_config

from alignlib.cli import main
from alignlib.config.online import VLLM_MISSING

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [
    {
        "prompt": f"What is {a} + {b}?",
        "answer": str(a + b),
        "solution": f"We add {a} and {b} to get {a + b}, so the answer is \\boxed{{{a + b}}}.",
    }
    for a, b in [(2, 3), (4, 4)]
]
REWARDS = """
def length(completion, **kw):
    return float(len(completion) % 7)
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    (tmp_path / "varied_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_config(
        tmp_path,
        tmp_path / "online",
        data={"path": str(tmp_path / "prompts.jsonl")},
        algorithm={"name": "grpo", "params": {}},
        train={"max_steps": 1},
        rollout={"n": 2, "max_new_tokens": 4},
        online={"prompts_per_step": 2, "micro_batch_size": 4},
    )
    sections = yaml.safe_load(path.read_text())  # the offline base's batch sizes: not online's
    sections["train"] = {k: v for k, v in sections["train"].items() if "batch_size" not in k}
    path.write_text(yaml.safe_dump(sections))
    return str(path)


def refused(config: str, *overrides: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["train", config, *overrides]) == 2
    return one_line(capsys.readouterr().err)


def trains(config: str, *overrides: str) -> None:
    assert main(["train", config, *overrides]) == 0


def test_hpt_routing_without_a_term_that_trains_demonstrations_is_refused(config, capsys) -> None:
    line = refused(config, "online.routing=hpt", capsys=capsys)
    assert line.startswith("alignlib: error: online.routing: hpt makes SFT rows")
    assert "algorithm grpo has no term that trains them" in line
    trains(config, "online.routing=hpt", "algorithm.name=hpt")


def test_pair_mean_aggregation_online_is_refused(config, capsys) -> None:
    components = "algorithm.components={{reference: old, advantage: grpo, aggregation: {}}}"
    line = refused(config, "algorithm.name=null", components.format("pair-mean"), capsys=capsys)
    assert "algorithm.components.aggregation: pair-mean needs preference pairs" in line
    trains(config, "algorithm.name=null", components.format("token-mean"))


def test_rollout_correction_bounds_that_exclude_one_are_refused(config, capsys) -> None:
    mode = "online.rollout_correction.mode=token_mask"
    bounds = ("online.rollout_correction.lower=2", "online.rollout_correction.upper=3")
    line = refused(config, mode, *bounds, capsys=capsys)
    assert "online.rollout_correction: [lower, upper] = [2, 3] excludes 1" in line
    line = refused(config, mode, "online.rollout_correction.upper=0.5", capsys=capsys)
    assert "[lower, upper] = [default, 0.5] excludes 1" in line
    trains(config, mode, "online.rollout_correction.lower=0.5", "online.rollout_correction.upper=2")


def test_every_reward_weight_zero_is_refused(config, capsys) -> None:
    line = refused(config, "online.rewards=[{name: math, weight: 0}]", capsys=capsys)
    assert "online.rewards: every weight is 0" in line
    trains(config, "online.rewards=[{name: math, weight: 0}, {name: format}]")


def test_a_run_whose_every_step_filtered_all_groups_fails(config, capsys) -> None:
    # The untrained tiny model never answers correctly: every group's math rewards are equal.
    line = refused(config, "algorithm.name=dapo", "train.max_steps=2", capsys=capsys)
    assert "every step filtered out all of its groups (dapo/filtered_frac = 1" in line
    assert "online.dynamic_sampling" in line
    assert not (Path(config).parent / "online" / "final").exists()
    trains(config, "algorithm.name=dapo", "online.rewards=[{name: varied_rewards:length}]")


def test_train_reference_is_refused_online(config, capsys) -> None:
    line = refused(config, "algorithm.params.kl_coef=0.1", "train.reference=none", capsys=capsys)
    assert line.startswith("alignlib: error: train.reference: none is not read by online runs")
    trains(config, "algorithm.params.kl_coef=0.1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpus_asked_of_ray_without_cuda_are_refused_at_once(config, capsys) -> None:
    gpu = ("distributed.num_workers=1", "distributed.use_gpu=true")
    line = refused(config, *gpu, capsys=capsys)
    assert "distributed.use_gpu: true but torch sees no CUDA device here" in line
    workers = ("rollout.num_workers=1", "rollout.worker_num_gpus=1")
    line = refused(config, *workers, capsys=capsys)
    assert "rollout.worker_num_gpus: 1 but torch sees no CUDA device here" in line


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn here")
def test_flash_attention_without_the_package_is_refused(config, capsys) -> None:
    line = refused(config, "model.attn_implementation=flash_attention_2", capsys=capsys)
    assert "model.attn_implementation: flash_attention_2 needs the flash-attn package" in line
    trains(config, "model.attn_implementation=sdpa")


def test_the_missing_vllm_message_points_at_the_readme() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "ENVIRONMENT.md" not in VLLM_MISSING and "README.md" in VLLM_MISSING
    assert '".[vllm]"' in VLLM_MISSING and 'pip install -e ".[vllm]"' in readme


def test_a_reward_module_beside_the_config_is_named_with_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    beside = (tmp_path / "configs").resolve()
    beside.mkdir()
    (beside / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    (beside / "beside_rewards_t.py").write_text(REWARDS)
    config = write_config(
        beside,
        tmp_path / "near",
        data={"path": "prompts.jsonl"},  # relative to the config, like the reward module
        algorithm={"name": "grpo", "params": {}},
        train={"max_steps": 1},
        rollout={"n": 2, "max_new_tokens": 4},
        online={"prompts_per_step": 2, "rewards": [{"name": "beside_rewards_t:length"}]},
    )
    monkeypatch.chdir(tmp_path)  # neither the current folder nor on sys.path
    line = refused(str(config), capsys=capsys)
    assert line == (
        f"alignlib: error: {config}: online.rewards[0].name: module 'beside_rewards_t' is not "
        f"importable here, but {beside / 'beside_rewards_t.py'} is next to the config; put the "
        f"config's folder on the import path: PYTHONPATH={beside} alignlib train ... (or install "
        "the module)"
    )
    monkeypatch.syspath_prepend(str(beside))  # what PYTHONPATH=<config folder> does
    trains(str(config))


def test_more_prompts_per_step_than_prompts_warns_what_a_step_holds(config, capsys) -> None:
    data = Path(config).parent / "prompts.jsonl"
    assert main(["train", config, "online.prompts_per_step=4"]) == 0
    assert one_line(capsys.readouterr().err, "warning") == (
        f"alignlib: warning: online.prompts_per_step (4) is more than the 2 prompts in "
        f"data.path {data}: each step takes those 2 once (steps of 2 prompts, not 4); lower "
        "online.prompts_per_step to 2 or add prompts"
    )
    dynamic = (
        "online.dynamic_sampling.enabled=true",
        "online.rewards=[{name: varied_rewards:length}]",
    )
    assert main(["train", config, "online.prompts_per_step=4", *dynamic]) == 0
    line = one_line(capsys.readouterr().err, "warning")
    assert (
        "dynamic sampling fills each step with further rounds over the same 2, so a step " in line
    )
    assert "can hold a prompt more than once" in line
    # More mini-batches than prompts: fewer optimizer steps than the schedule is sized for.
    line = refused(config, "online.prompts_per_step=4", "online.mini_batches=3", capsys=capsys)
    assert "online.mini_batches (3) is more than the 2 prompts in data.path" in line
    assert main(["train", config]) == 0  # as many prompts as a step takes: no warning
    assert "warning" not in capsys.readouterr().err


def test_distributed_keys_without_workers_are_named_in_one_warning(config, capsys) -> None:
    from alignlib.config.loader import load_config
    from alignlib.trainer.preflight import note_ignored_distributed

    assert main(["train", config, "distributed.use_gpu=true", "distributed.strategy=fsdp2"]) == 0
    assert one_line(capsys.readouterr().err, "warning") == (
        "alignlib: warning: distributed.strategy, distributed.use_gpu have no effect: "
        "distributed.num_workers is 0, so training runs in this process; set "
        "distributed.num_workers to train on Ray workers, or remove them"
    )
    colocate = ["distributed.num_workers=2", "distributed.placement=colocate"]
    note_ignored_distributed(load_config(config, colocate))
    line = one_line(capsys.readouterr().err, "warning")
    assert line.startswith("alignlib: warning: distributed.placement has no effect: it places")
    assert "(rollout.num_workers is 0); set rollout.num_workers, or remove it" in line
    note_ignored_distributed(load_config(config, [*colocate, "rollout.num_workers=1"]))
    note_ignored_distributed(load_config(config, ["distributed.num_workers=2"]))
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_distributed_ray_address_does_not_excuse_rollout_gpus_without_workers(
    config, capsys
) -> None:
    # With distributed.num_workers 0 the rollout workers start their own Ray, not that cluster.
    gpus = ("rollout.num_workers=1", "rollout.worker_num_gpus=1", "rollout.timeout_s=5")
    line = refused(config, "distributed.ray_address=auto", *gpus, capsys=capsys)
    assert "rollout.worker_num_gpus: 1 but torch sees no CUDA device here" in line
