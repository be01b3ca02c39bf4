"""What a new user coming from TRL ran into (an audit by hand, 2026-11-29), each pinned: the last
step's checkpoint so a run can be extended without redoing steps, `algorithm.params={}` on the
command line, train.batch_size in an online run, reward functions in a Python config, where a
reward raised, `--traceback`, and the checkpoints a wrong resume path lists."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from test_reliability_runs import PAIRS, metrics, write_config

from alignlib.cli import main
from alignlib.config import load_config
from alignlib.config.loader import ConfigError
from alignlib.rewards import RewardError, get_reward, named_rewards, score_batch


def dpo_config(tmp: Path) -> Path:
    """A 2-step DPO run into tmp/run, checkpointed every step (test_reliability_runs' config)."""
    (tmp / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return write_config(
        tmp, tmp / "run", train={"micro_batch_size": 2, "max_steps": 2}, checkpoint={"every": 1}
    )


def test_the_last_step_is_checkpointed_so_a_longer_run_continues_it(tmp_path: Path, capsys) -> None:
    config = str(dpo_config(tmp_path))
    assert main(["train", config]) == 0
    run = tmp_path / "run"
    assert (run / "checkpoints" / "step-0000002" / "trainer_state.pt").is_file()
    capsys.readouterr()
    assert main(["train", config, "checkpoint.resume=true", "train.max_steps=3"]) == 0
    assert "(step 2)" in capsys.readouterr().err
    assert [m["step"] for m in metrics(run)] == [1, 2, 3]  # step 2 is not trained twice


def test_an_empty_mapping_override_clears_the_file_s_params(tmp_path: Path) -> None:
    config = dpo_config(tmp_path)
    with pytest.raises(ConfigError, match=r"algorithm.params=\{\} drops them") as caught:
        load_config(config, ["algorithm.name=sft"])
    assert "\n" not in str(caught.value)
    cleared = load_config(config, ["algorithm.name=sft", "algorithm.params={}"])
    assert cleared.algorithm.name == "sft" and cleared.algorithm.params == {}
    kept = load_config(config, ["algorithm.params.beta=0.2"])  # a key still merges
    assert kept.algorithm.params == {"beta": 0.2}


def test_train_batch_sizes_in_an_online_run_get_a_warning(capsys) -> None:
    from alignlib.config.schema import RunConfig
    from alignlib.trainer.preflight_online import check_offline_sizes

    base = {
        "model": {"name_or_path": "tiny:llama"},
        "data": {"path": "x.jsonl"},
        "algorithm": {"name": "grpo"},
        "rollout": {"n": 2},
    }
    check_offline_sizes(RunConfig.model_validate(base))
    assert capsys.readouterr().err == ""
    check_offline_sizes(RunConfig.model_validate(base | {"train": {"batch_size": 64}}))
    err = capsys.readouterr().err.strip()
    assert err.startswith("alignlib: warning: train.batch_size: not read by online runs")
    assert "online.prompts_per_step" in err and "\n" not in err


def length_reward(completions: list[str], **_: Any) -> list[float]:
    return [float(len(c)) for c in completions]


def test_reward_functions_in_a_python_config_are_registered_by_name() -> None:
    def length_reward_too(completion: str, **_: Any) -> float:
        return 1.0

    sections = {"online": {"rewards": [length_reward, {"name": length_reward_too, "weight": 2}]}}
    named = named_rewards(sections)["online"]["rewards"]
    assert named[0] == {"name": "length_reward"} and get_reward("length_reward") is length_reward
    assert named[1] == {"name": "length_reward_too", "weight": 2}
    assert named_rewards(sections)["online"]["rewards"] == named  # the same names again

    def impostor(completion: str, **_: Any) -> float:  # another function, the same name
        return 0.0

    impostor.__name__ = "length_reward"
    other = named_rewards({"online": {"rewards": [impostor]}})["online"]["rewards"]
    assert other == [{"name": "length_reward_2"}] and get_reward("length_reward_2") is impostor
    assert named_rewards({"online": {"rewards": [{"name": "math"}]}}) == {
        "online": {"rewards": [{"name": "math"}]}
    }


def broken_batch_reward(completions: list[str], **_: Any) -> list[float]:
    return [1.0 / len(c[100:]) for c in completions]  # ZeroDivisionError on short answers


def test_a_batched_reward_s_failure_names_the_batch_and_the_line() -> None:
    rows = [{"prompt": "What is 1 + 1?", "answer": "2"}, {"prompt": "Hi", "answer": "3"}]
    with pytest.raises(RewardError) as caught:
        score_batch(broken_batch_reward, "broken", ["2", "3"], rows, {})
    line = str(caught.value)
    assert (
        "a batch of 2 completions (the first of the data row with prompt 'What is 1 + 1?'" in line
    )
    at = broken_batch_reward.__code__.co_firstlineno + 1
    assert f"(at {__file__} line {at}, in " in line, line


@pytest.mark.parametrize("flag", [[], ["--traceback"]])
def test_traceback_only_on_request(tmp_path: Path, capsys, flag: list[str]) -> None:
    assert main([*flag, "train", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alignlib: error: config file") and "does not exist" in err
    assert ("Traceback (most recent call last)" in err) == bool(flag)


def test_a_wrong_resume_path_lists_the_checkpoints_there(tmp_path: Path, capsys) -> None:
    config = str(dpo_config(tmp_path))
    assert main(["train", config]) == 0
    capsys.readouterr()
    wrong = tmp_path / "run" / "checkpoints" / "step-2"
    assert main(["train", config, f"checkpoint.resume={wrong}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "step-0000001, step-0000002" in err, err


def test_a_hub_name_without_network_fails_fast_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """No minute of retries: an unreachable Hub means the local cache alone, then one line."""
    import time

    from huggingface_hub import constants

    import alignlib.models as models

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests set it
    monkeypatch.setattr(models, "hub_reachable", lambda timeout_s=3.0: False)
    began = time.perf_counter()
    with pytest.raises(OSError, match="the Hub is unreachable from here and it is not in the"):
        models.load_model_and_tokenizer("no-such-org/no-such-model-xyz")
    assert time.perf_counter() - began < 10


def test_the_hub_probe_trusts_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from alignlib.hub import hub_reachable

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub_reachable(timeout_s=0.1)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert not hub_reachable(timeout_s=0.1)


def test_heldout_logs_the_run_s_own_reward_when_its_rows_allow(tmp_path: Path, capsys) -> None:
    """heldout/reward_mean: the greedy completions scored by online.rewards (weights included),
    so a run whose reward is not math still sees its held-out progress; held-out rows without
    a column a reward reads get a warning and no such metric, not a crash."""
    from test_online import make_config

    from alignlib import Trainer

    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(json.dumps({"prompt": "1 + 1?", "answer": "2"}) + "\n")
    const = {"name": "online_rewards:constant_or_digit", "params": {"mode": "const"}}
    config = make_config(
        tmp_path,
        train={"max_steps": 1},
        online={"rewards": [{**const, "weight": 0.5}], "heldout": {"data": str(heldout)}},
    )
    history = Trainer(load_config(config)).train().history
    assert [h["heldout/reward_mean"] for h in history if "heldout/accuracy" in h] == [0.5, 0.5]
    capsys.readouterr()
    rows = tmp_path / "targets.jsonl"
    rows.write_text(json.dumps({"prompt": "1 + 1?", "answer": "2", "target": "2"}) + "\n")
    reads_target = {"name": "online_rewards:matches_target"}
    config = make_config(
        tmp_path,
        "run2",
        data={"path": str(rows)},
        train={"max_steps": 1},
        online={
            "rewards": [reads_target],
            "heldout": {"data": str(heldout)},
            "prompts_per_step": 1,
        },
    )
    history = Trainer(load_config(config)).train().history
    assert not any("heldout/reward_mean" in h for h in history)
    assert "warning: heldout/reward_mean is not logged" in capsys.readouterr().err


def test_a_list_item_override_says_to_give_the_whole_list(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(dpo_config(tmp_path), ["online.rewards[0].weight=2"])
    assert str(caught.value) == (
        "override 'online.rewards[0].weight=2': one item of a list cannot be set alone; give "
        "the whole list, e.g. online.rewards='[{name: math, weight: 2}]'"
    )


def test_online_rows_may_keep_their_prompt_under_another_name(tmp_path: Path, capsys) -> None:
    """GSM8K's {question, answer}: data.prompt_field reads the prompt there (training rows and
    held-out rows); without it, the missing prompt's line names the key."""
    from test_online import make_config

    from alignlib import Trainer

    rows = [{"question": f"What is {a} + {a}?", "target": str(2 * a)} for a in range(1, 5)]
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sections = {"train": {"max_steps": 1}, "online": {"heldout": {"data": str(data)}}}
    config = make_config(tmp_path, data={"path": str(data), "answer_field": "target"}, **sections)
    capsys.readouterr()
    assert main(["train", str(config)]) == 2
    line = capsys.readouterr().err.strip()
    assert "row 1: field 'prompt' is missing or empty" in line
    assert "this row has question, target; data.prompt_field: question reads it from there" in line
    history = Trainer(load_config(config, ["data.prompt_field=question"])).train().history
    assert history[-1]["rollout/reward_mean"] >= 0 and "heldout/accuracy" in history[-1]


def test_no_progress_means_no_library_bars_either() -> None:
    """logging.progress: false also silences transformers' and the Hub's own bars (loading
    weights, writing shards), which printed through it."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    from alignlib.console import quiet_library_bars

    try:
        quiet_library_bars()
        assert not transformers_logging.is_progress_bar_enabled()
        assert are_progress_bars_disabled()
    finally:
        transformers_logging.enable_progress_bar()
        enable_progress_bars()


def test_resuming_a_finished_run_says_there_is_nothing_left(tmp_path: Path, capsys) -> None:
    config = str(dpo_config(tmp_path))
    assert main(["train", config]) == 0
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(["train", config, "checkpoint.resume=true"]) == 0
    assert "nothing left to train: the checkpoint is at step 2 of 2; raise train.max_steps" in (
        capsys.readouterr().err
    )
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_no_progress_silences_the_gguf_readers_own_bar() -> None:
    """transformers' GGUF reader (the quickstart's model is converted from its GGUF on a fresh
    machine) draws its own tqdm bar, deaf to the progress switch: alignlib turns it off with
    the switch, and leaves it on otherwise."""
    from transformers import modeling_gguf_pytorch_utils as reader
    from transformers.utils import logging as transformers_logging

    from alignlib.models import gguf_bar_follows_switch

    original = reader.tqdm
    try:
        transformers_logging.disable_progress_bar()
        with gguf_bar_follows_switch():
            assert reader.tqdm(range(3)).disable
        transformers_logging.enable_progress_bar()
        with gguf_bar_follows_switch():
            assert not reader.tqdm(range(3), file=io.StringIO()).disable
    finally:
        transformers_logging.enable_progress_bar()
    assert reader.tqdm is original


@pytest.mark.slow
def test_no_progress_silences_the_bundled_models_first_conversion(tmp_path: Path, capfd) -> None:
    """End to end: converting the bundled GGUF with the switch off prints no bar, with it on
    it does (two conversions, ~40 s)."""
    from transformers.utils import logging as transformers_logging

    from alignlib.models import bundled_smollm2_folder

    try:
        transformers_logging.disable_progress_bar()
        bundled_smollm2_folder(tmp_path / "quiet")
        assert "de-quantizing" not in capfd.readouterr().err
    finally:
        transformers_logging.enable_progress_bar()
    bundled_smollm2_folder(tmp_path / "loud")
    assert "de-quantizing" in capfd.readouterr().err


def test_offline_rows_read_their_prompt_from_data_prompt_field(tmp_path: Path, capsys) -> None:
    """Preference rows whose prompt column is `question` train exactly as the same rows with
    `prompt` when data.prompt_field names it; without it the error names the option, and a
    misspelt one says which column was meant. (Before, only online rows had prompt_field; an
    offline run took the question for an implicit prompt and refused the rows.)"""
    from test_reliability_runs import same_training

    plain, renamed = tmp_path / "plain", tmp_path / "renamed"
    for folder, rows in (
        (plain, PAIRS),
        (
            renamed,
            [
                {"question": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}
                for p in PAIRS
            ],
        ),
    ):
        folder.mkdir()
        (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    steps = {"micro_batch_size": 2, "max_steps": 2}
    config = str(write_config(plain, plain / "run", train=steps))
    other = str(write_config(renamed, renamed / "run", train=steps))
    assert main(["train", config]) == 0
    assert main(["train", other, "data.prompt_field=question"]) == 0
    same_training(metrics(renamed / "run"), metrics(plain / "run"))
    capsys.readouterr()
    assert main(["train", other, f"output_dir={tmp_path / 'x'}"]) == 2
    assert "data.prompt_field: question reads the prompt from it" in capsys.readouterr().err
    assert main(["train", other, "data.prompt_field=questoin"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.prompt_field 'questoin'" in err[0] and "'question'" in err[0]
