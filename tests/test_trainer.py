"""The offline trainer end to end on a tiny model: every method learns on a fixed batch, resume
is exact, LoRA adapters reload, INPO iterates, and bad configs / data give one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from alignlib.cli import main
from alignlib.config import ConfigError, load_config
from alignlib.data import DataError
from alignlib.trainer.loop import Trainer, TrainResult

PAIRS = [
    {
        "prompt": f"What is {a} + {b}?",
        "chosen": f"\\boxed{{{a + b}}}",
        "rejected": f"\\boxed{{{a + b + 1}}}",
    }
    for a, b in [(2, 3), (4, 4), (7, 1), (6, 3)]
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def datasets(tmp: Path) -> dict[str, Path]:
    sft = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS]
    tpo = [{**p, "reference": f"Adding gives {p['chosen']}"} for p in PAIRS]
    bvpo = [{**p, "trace": i % 2 == 0} for i, p in enumerate(PAIRS)]
    kto = [
        {"prompt": p["prompt"], "completion": p[key], "label": key == "chosen"}
        for p in PAIRS
        for key in ("chosen", "rejected")
    ]
    return {
        "kto": write_jsonl(tmp / "kto.jsonl", kto),
        "sft": write_jsonl(tmp / "sft.jsonl", sft),
        "preference": write_jsonl(tmp / "pairs.jsonl", PAIRS),
        "tpo": write_jsonl(tmp / "tpo.jsonl", tpo),
        "bvpo": write_jsonl(tmp / "bvpo.jsonl", bvpo),
    }


def config_file(tmp: Path, data_path: Path, algorithm: str, **sections) -> Path:
    cfg = {
        "output_dir": str(tmp / f"run-{algorithm}"),
        "model": {"name_or_path": "tiny:llama"},
        "data": {"path": str(data_path), "shuffle": False},
        "algorithm": {"name": algorithm},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "schedule": "constant"},
        "train": {"batch_size": 4, "micro_batch_size": 2, "max_steps": 5},
        "logging": {"progress": False, "tensorboard": False, "plot": False},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    path = tmp / f"{algorithm}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


METHODS = {
    "sft": "sft",
    "dpo": "preference",
    "ipo": "preference",
    "hinge": "preference",
    "rpo": "preference",
    "rpo_avg": "preference",
    "tpo": "tpo",
    "tpo_l": "tpo",
    "bvpo": "bvpo",
    "simpo": "preference",
    "cpo": "preference",
    "orpo": "preference",
    "kto": "kto",
    "robust": "preference",
    "exo_pair": "preference",
    "nca_pair": "preference",
    "bco_pair": "preference",
    "sppo_hard": "preference",
    "apo_zero": "preference",
    "apo_down": "preference",
    "discopop": "preference",
    "dpop": "preference",
    "rdpo": "preference",
    "aot": "preference",
    "aot_unpaired": "preference",
    "reward_model": "preference",
}


@pytest.mark.parametrize("algorithm", sorted(METHODS))
def test_loss_goes_down_on_a_fixed_batch(tmp_path: Path, algorithm: str) -> None:
    data = datasets(tmp_path)[METHODS[algorithm]]
    result = Trainer(load_config(config_file(tmp_path, data, algorithm))).train()
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 5
    assert losses[-1] < losses[0] - 1e-3, losses
    assert (result.output_dir / "final" / "config.json").is_file()
    assert len((result.output_dir / "metrics.jsonl").read_text().splitlines()) == 5


def interrupted_then_resumed(
    config: Path, monkeypatch: pytest.MonkeyPatch, at_update: int
) -> TrainResult:
    """Run ``config`` until a simulated interruption at its ``at_update``-th optimizer update
    (no final/ written), then resume it from its newest checkpoint to the end."""
    import alignlib.trainer.loop as loop

    calls, original = {"n": 0}, loop.update

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_update:
            raise KeyboardInterrupt("simulated interruption")
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "update", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Trainer(load_config(config)).train()
    monkeypatch.setattr(loop, "update", original)
    assert not (Path(load_config(config).output_dir) / "final").exists()
    return Trainer(load_config(config, ["checkpoint.resume=true"])).train()


def test_resume_equals_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = datasets(tmp_path)["preference"]
    extra = {
        "train": {"max_steps": 6, "batch_size": 2, "micro_batch_size": 1},
        "data": {"shuffle": True},
        "checkpoint": {"every": 3},
    }
    (tmp_path / "a").mkdir()
    straight = Trainer(load_config(config_file(tmp_path / "a", data, "dpo", **extra))).train()
    (tmp_path / "b").mkdir()
    cfg_b = config_file(tmp_path / "b", data, "dpo", **extra)
    resumed = interrupted_then_resumed(cfg_b, monkeypatch, at_update=4)
    lines = (tmp_path / "b" / "run-dpo" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for want, got in zip(straight.history, records, strict=True):
        for key in ("loss", "grad_norm", "lr", "dpo/margin", "dpo/accuracy"):
            assert got[key] == want[key], (key, got["step"])
    assert resumed.steps == 6


def test_resume_from_a_given_checkpoint_folder(tmp_path: Path) -> None:
    """`checkpoint.resume: PATH` continues another run's checkpoint in a new folder, exactly."""
    data = datasets(tmp_path)["preference"]
    extra = {"train": {"max_steps": 4, "batch_size": 2}, "checkpoint": {"every": 2}}
    (tmp_path / "a").mkdir()
    first = Trainer(load_config(config_file(tmp_path / "a", data, "dpo", **extra))).train()
    step2 = first.output_dir / "checkpoints" / "step-0000002"
    (tmp_path / "b").mkdir()
    cfg = config_file(tmp_path / "b", data, "dpo", **extra)
    resumed = Trainer(load_config(cfg, [f"checkpoint.resume={step2}"])).train()
    assert [r["step"] for r in resumed.history] == [3, 4]
    for want, got in zip(first.history[2:], resumed.history, strict=True):
        assert got["loss"] == want["loss"] and got["grad_norm"] == want["grad_norm"]
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        Trainer(load_config(cfg, [f"checkpoint.resume={tmp_path}"])).train()


def test_lora_adapter_reloads_to_same_outputs(tmp_path: Path) -> None:
    data = datasets(tmp_path)["preference"]
    cfg = load_config(
        config_file(
            tmp_path, data, "dpo", lora={"enabled": True, "r": 4, "alpha": 8, "save_merged": True}
        )
    )
    trainer = Trainer(cfg)
    trainer.train()
    final = Path(cfg.output_dir) / "final"
    assert (final / "adapter_config.json").is_file()
    from peft import PeftModel

    from alignlib.testing import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    base = build_tiny_model(tokenizer, hidden=64, layers=2)
    reloaded = PeftModel.from_pretrained(base, str(final)).eval()
    ids = torch.tensor([tokenizer.encode("What is 2 + 3?")])
    trainer.model.eval()
    with torch.no_grad():
        want = trainer.model(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
        from transformers import AutoModelForCausalLM

        merged = AutoModelForCausalLM.from_pretrained(Path(cfg.output_dir) / "merged")(
            input_ids=ids
        )
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(merged.logits, want, atol=1e-4)


ITERATIVE = {
    "iterations": 2,
    "samples_per_prompt": 3,
    "max_new_tokens": 8,
    "oracle": "oracles_for_tests:shortest",
}


def iterative_run(tmp_path: Path, algorithm: str, section: str = "iterative", **extra) -> Path:
    """Two iterations of ``algorithm`` over 4 prompts, 2 steps each (``section``: the config
    key, `inpo` being the earlier name of `iterative`)."""
    path = config_file(
        tmp_path,
        tmp_path / "unused.jsonl",
        algorithm,
        data={"path": "builtin:gsm8k_prompts", "limit": 4},
        train={"max_steps": None, "epochs": 1, "batch_size": 2, "micro_batch_size": 1},
        **{section: {**ITERATIVE, **extra}},
    )
    return Path(Trainer(load_config(path)).train().output_dir)


@pytest.mark.parametrize(
    ("algorithm", "section"), [("inpo", "inpo"), ("dpo", "iterative"), ("simpo", "iterative")]
)
def test_preference_iterations_run_any_pairwise_method(
    tmp_path: Path, algorithm: str, section: str
) -> None:
    """INPO's loop trains any pairwise method: iterative DPO, reference-free SimPO."""
    out = iterative_run(tmp_path, algorithm, section)
    lines = (out / "iterations.jsonl").read_text().splitlines()
    iterations = [json.loads(line) for line in lines]
    assert [it["iteration"] for it in iterations] == [1, 2]
    assert all(it["pairs"] >= 1 for it in iterations)
    assert (out / "final" / "config.json").is_file()
    # One run, one metrics file: each step says which iteration it trained.
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_step = [m["iterative/iteration"] for m in logged]
    assert per_step == [1.0, 1.0, 2.0, 2.0]
    assert f"{algorithm}/loss" in logged[0]


def test_the_earlier_section_name_inpo_is_read_as_iterative(tmp_path: Path) -> None:
    prompts = {"path": "builtin:gsm8k_prompts"}
    path = config_file(tmp_path, tmp_path / "unused.jsonl", "inpo", data=prompts, inpo=ITERATIVE)
    config = load_config(path, ["iterative.samples_per_prompt=5"])  # an override merges in
    assert config.iterative is not None
    assert config.iterative.samples_per_prompt == 5
    assert config.iterative.oracle == ITERATIVE["oracle"]


def test_an_iteration_whose_prompts_all_tie_samples_the_next_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Online DPO on prompts whose K samples all tie gives no pair: the iteration samples the
    next prompts (a new seed each round) up to iterative.max_tries, then stops in one line."""
    rows = [{"prompt": p["prompt"], "tie": i < 2} for i, p in enumerate(PAIRS)]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    section = {
        **ITERATIVE,
        "oracle": "oracles_for_tests:shortest_unless_tie",
        "prompts_per_iteration": 1,
        "iterations": 1,
    }
    path = config_file(
        tmp_path,
        data,
        "dpo",
        train={"max_steps": 1, "batch_size": 1, "micro_batch_size": 1},
        iterative=section,
    )
    out = Path(Trainer(load_config(path, ["iterative.max_tries=3"])).train().output_dir)
    (record,) = [json.loads(line) for line in (out / "iterations.jsonl").read_text().splitlines()]
    assert record["rounds"] == 3 and record["pairs"] == 1  # rows 1 and 2 tie, row 3 pairs
    capsys.readouterr()
    fresh = f"output_dir={tmp_path / 'second'}"
    assert main(["train", str(path), "iterative.max_tries=2", fresh]) == 2
    err = capsys.readouterr().err
    assert "no prompt had a best response that beat its worst in 2 rounds" in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("optimizer", ["fresh", "continue"])
def test_iterations_restart_or_continue_the_optimizer(tmp_path: Path, optimizer: str) -> None:
    """A linear decay restarts with each iteration's fresh optimizer, and spans the whole run
    when one optimizer continues (online DPO)."""
    folder = tmp_path / optimizer
    folder.mkdir()
    path = config_file(
        folder,
        folder / "unused.jsonl",
        "dpo",
        data={"path": "builtin:gsm8k_prompts", "limit": 4},
        train={"max_steps": None, "epochs": 1, "batch_size": 2, "micro_batch_size": 1},
        optim={"schedule": "linear", "warmup_ratio": 0.0},
        iterative={**ITERATIVE, "optimizer": optimizer},
    )
    out = Path(Trainer(load_config(path)).train().output_dir)
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lrs) == 4 and lrs[1] < lrs[0]
    if optimizer == "fresh":
        assert lrs[2:] == lrs[:2]
    else:
        assert lrs[3] < lrs[2] < lrs[1]


@pytest.mark.parametrize("reference", ["initial", "previous"])
def test_iteration_reference_is_the_initial_policy_or_the_previous_iterate(
    tmp_path: Path, reference: str
) -> None:
    """Each iteration's first step scores its pairs before any update of that iteration, so
    the implicit rewards β·log(π/π_ref) there are 0 exactly when π_ref is π_t (`previous`);
    against the initial policy they are 0 in iteration 1 only."""
    out = iterative_run(tmp_path, "dpo", reference=reference)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, second = logged[0], logged[2]  # the first step of iteration 1 and of iteration 2
    assert second["iterative/iteration"] == 2.0
    assert abs(first["dpo/chosen_reward"]) < 1e-5 and abs(first["dpo/rejected_reward"]) < 1e-5
    moved = max(abs(second["dpo/chosen_reward"]), abs(second["dpo/rejected_reward"]))
    if reference == "previous":
        assert moved < 1e-5
    else:
        assert moved > 1e-3


@pytest.mark.parametrize(
    ("algorithm", "extra", "message"),
    [
        ("sft", {}, "iterative: trains on (best, worst) pairs of sampled responses"),
        ("kto", {}, "is not a pairwise preference method"),
        ("bvpo", {}, "is not a pairwise preference method"),  # its pairs need trace flags
        ("inpo", {"reference": "previous"}, "iterative.reference: previous makes π_ref"),
    ],
)
def test_iterations_refuse_a_method_they_cannot_train(
    tmp_path: Path, algorithm: str, extra: dict, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        iterative_run(tmp_path, algorithm, **extra)
    assert message in str(caught.value) and "\n" not in str(caught.value)


BAD_CONFIGS = [
    ({"optim": {"lrr": 1}}, "optim.lrr: unknown key (did you mean 'lr'?)"),
    ({"optim": {"lr": "fast"}}, "optim.lr: Input should be a valid number"),
    ({"optim": {"lr": -1}}, "optim.lr: Input should be greater than 0"),
    ({"trian": {}}, "trian: unknown key (did you mean 'train'?)"),
    (
        {"algorithm": {"name": "dpoo"}},
        "algorithm.name: unknown algorithm 'dpoo' (did you mean 'dpo'?)",
    ),
    (
        {"algorithm": {"name": "dpo", "params": {"bta": 1}}},
        "algorithm.params.bta: not a parameter of dpo (did you mean 'beta'?)",
    ),
    (
        {"train": {"batch_size": 3, "micro_batch_size": 2}},
        "must be a multiple of train.micro_batch_size",
    ),
    ({"data": {"path": "missing.jsonl"}}, "data.path: file"),
    ({"online": {"heldout": {"data": "nohe.jsonl"}}}, "online.heldout.data: file"),
    ({"optim": {"betas": [0.9]}}, "optim.betas: too few values, got [0.9]"),
    ({"output_dir": {"foo": 1}}, "output_dir has no sub-keys: set it to a value"),
    ({"data": {"format": "pairs"}}, "data.format: Input should be 'auto', 'sft', 'preference'"),
    ({"algorithm": {"name": None}}, "set exactly one of algorithm.name, algorithm.components and"),
    (
        {"algorithm": {"name": None, "components": {"advantage": "grop"}}},
        "unknown advantage 'grop' (did you mean 'grpo'?)",
    ),
    (
        {"rollout": {"weight_transport": "broadcast"}},
        "rollout.weight_transport: broadcast needs rollout.num_workers > 0",
    ),
    (
        {"rollout": {"weight_transport": "broadcast", "num_workers": 2, "worker_num_gpus": 0.5}},
        "broadcast needs whole GPUs per worker (worker_num_gpus is 0.5)",
    ),
]


@pytest.mark.parametrize(("changes", "message"), BAD_CONFIGS)
def test_bad_config_is_one_clear_line(tmp_path: Path, changes: dict, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(changes))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert message in text, text
    assert "\n" not in text and text.startswith(str(path))


def test_cli_prints_one_line_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: [1, 2\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alignlib: error:") and "line" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert main(["config", "show", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert main(["train", str(tmp_path / "empty.yaml")]) == 2
    assert "empty.yaml is empty" in capsys.readouterr().err


def test_an_invalid_override_is_blamed_on_the_override_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lr": 1e-3}}))
    for override, message in [
        ("optim.betas=[0.9]", "optim.betas: too few values"),
        ("train.batch_size=abc", "train.batch_size: Input should be a valid integer"),
        ("optim.lr=-1", "optim.lr: Input should be greater than 0"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_config(path, [override])
        assert str(info.value).startswith(f"command-line override: {message}"), info.value
    path.write_text(yaml.safe_dump({"optim": {"lr": -1}}))
    with pytest.raises(ConfigError, match=f"^{path}: optim.lr"):
        load_config(path, ["optim.weight_decay=0.1"])  # the file's value, not the override's


def test_overrides_apply_and_show(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = config_file(tmp_path, datasets(tmp_path)["preference"], "dpo")
    assert main(["config", "show", str(path), "optim.lr=1e-6", "algorithm.params.beta=0.3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["optim"]["lr"] == 1e-6 and shown["algorithm"]["params"]["beta"] == 0.3


def test_data_errors_name_file_and_row(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [PAIRS[0], {"prompt": "x", "chosen": "y"}])
    with pytest.raises(DataError, match=r"bad\.jsonl row 2: field 'rejected' is missing"):
        Trainer(load_config(config_file(tmp_path, bad, "dpo"))).train()
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"question": "x", "response": "y"}])
    with pytest.raises(DataError, match="cannot infer the data format"):
        Trainer(load_config(config_file(tmp_path, odd, "sft"))).train()
    cfg = config_file(tmp_path, bad, "dpo", data={"path": "builtin:nope"})
    with pytest.raises(DataError, match="unknown builtin data set 'nope'"):
        Trainer(load_config(cfg)).train()


def test_plot_command_writes_png(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, datasets(tmp_path)["sft"], "sft", train={"max_steps": 2})
    Trainer(load_config(cfg)).train()
    assert main(["plot", str(tmp_path / "run-sft")]) == 0
    png = tmp_path / "run-sft" / "training_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_in_loop_eval_is_logged_with_training_metrics(tmp_path: Path) -> None:
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"problem": "1+1?", "answer": "2"}] * 2)
    cfg = config_file(
        tmp_path,
        datasets(tmp_path)["sft"],
        "sft",
        train={"max_steps": 4},
        eval={"benchmarks": [str(bench)], "every": 2, "max_new_tokens": 4},
    )
    Trainer(load_config(cfg)).train()
    records = [
        json.loads(x) for x in (tmp_path / "run-sft" / "metrics.jsonl").read_text().splitlines()
    ]
    with_eval = [r["step"] for r in records if any(k.startswith("eval/") for k in r)]
    assert with_eval == [2, 4]
    assert (tmp_path / "run-sft" / "eval" / "step-2" / "results.json").is_file()


def test_train_command_prints_small_values_to_four_significant_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A learning rate of 5e-7 is what the user set, not 0.0 (rounding to 4 decimals was)."""
    cfg = config_file(tmp_path, datasets(tmp_path)["sft"], "sft", train={"max_steps": 1})
    assert main(["train", str(cfg), "optim.lr=5e-7"]) == 0
    final = next(line for line in capsys.readouterr().out.splitlines() if "final metrics" in line)
    assert "lr=5e-07" in final, final
