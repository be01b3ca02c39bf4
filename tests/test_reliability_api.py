"""User errors at API and CLI edges give one clear line: INPO's reward_model: oracle folder and
batch-form oracles, eval's empty answers / missing vLLM / file as --output-dir, reward modules
that do not import, and what `alignlib.Trainer` accepts."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from alignlib.cli import main
from alignlib.config import ConfigError, RunConfig, load_config
from alignlib.rewards import resolve_reward
from alignlib.trainer.loop import Trainer
from alignlib.trainer.sample_rank import check_reward_model_folder, resolve_oracle


def _error_line(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alignlib: error: ") and "\n" not in err, err
    return err


def _model_folder(path: Path, architecture: str) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    return path


def _run_config(tmp: Path, **sections) -> dict:
    prompts = tmp / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "What is 1+1?", "answer": "2"}) + "\n")
    cfg = {
        "output_dir": str(tmp / "run"),
        "model": {"name_or_path": "tiny:llama", "device": "cpu", "precision": "fp32"},
        "data": {"path": str(prompts), "shuffle": False},
        "algorithm": {"name": "inpo"},
        "train": {"batch_size": 2, "micro_batch_size": 2, "max_steps": 1},
        "iterative": {
            "iterations": 1,
            "samples_per_prompt": 2,
            "max_new_tokens": 2,
            "oracle": "math",
        },
        "logging": {"progress": False, "tensorboard": False, "plot": False},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


# --- 1. iterative.oracle=reward_model:PATH must be a sequence-classification model ---------------


def test_reward_model_oracle_refuses_a_causal_lm_before_loading(tmp_path, monkeypatch):
    lm = _model_folder(tmp_path / "lm", "LlamaForCausalLM")
    with pytest.raises(ValueError, match="is a LlamaForCausalLM, not a sequence-classification"):
        resolve_oracle(f"reward_model:{lm}")
    with pytest.raises(ValueError, match=r"iterative.oracle: .*nope does not exist"):
        check_reward_model_folder(str(tmp_path / "nope"))
    run = tmp_path / "run"
    _model_folder(run / "final", "LlamaForCausalLM")
    with pytest.raises(ValueError, match=r"training run folder .* sequence-classification"):
        check_reward_model_folder(str(run))
    rm_run = tmp_path / "rm_run"
    rm = _model_folder(rm_run / "final", "LlamaForSequenceClassification")
    with pytest.raises(ValueError, match=f"give its model: reward_model:{rm}"):
        check_reward_model_folder(str(rm_run))
    assert check_reward_model_folder(str(rm)) == str(rm)  # the valid folder passes
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="not a local folder and its Hub config could not be"):
        check_reward_model_folder("no-such-org-xyz/no-such-rm")


def test_train_cli_refuses_a_causal_lm_reward_model(tmp_path, capsys):
    lm = _model_folder(tmp_path / "lm", "LlamaForCausalLM")
    path = tmp_path / "inpo.yaml"
    path.write_text(yaml.safe_dump(_run_config(tmp_path)))
    err = _error_line(["train", str(path), f"iterative.oracle=reward_model:{lm}"], capsys)
    assert "iterative.oracle:" in err and "LlamaForCausalLM" in err and "score head" in err


# --- 8. a TRL-form oracle for INPO ------------------------------------------------------------


def test_inpo_oracle_in_batch_form_is_refused(tmp_path, monkeypatch):
    (tmp_path / "oracle_forms_t.py").write_text(
        "def trl_ok(completions, **kw):\n    return [1.0 for _ in completions]\n"
        "def good(completion, **kw):\n    return float(len(completion))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"iterative.oracle: oracle_forms_t:trl_ok is a TRL-form"):
        resolve_oracle("oracle_forms_t:trl_ok")
    score = resolve_oracle("oracle_forms_t:good")
    assert score(["p", "p"], ["a", "abc"], [{}, {}]) == [1.0, 3.0]


# --- 2-4. alignlib eval ------------------------------------------------------------------------


def _eval_argv(bench: Path, out: Path) -> list[str]:
    argv = ["eval", "--model", "tiny:llama", "--benchmarks", str(bench)]
    return [*argv, "--max-new-tokens", "2", "--output-dir", str(out)]


def test_eval_refuses_empty_answers(tmp_path, capsys):
    bench = tmp_path / "b.jsonl"
    rows = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "  "}]
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    err = _error_line(_eval_argv(bench, tmp_path / "out"), capsys)
    assert f"{bench}:2: field 'answer'" in err and "non-empty reference answer" in err
    bench.write_text(json.dumps(rows[0]) + "\n")
    assert main(_eval_argv(bench, tmp_path / "out")) == 0


def test_eval_output_dir_that_is_a_file_and_missing_vllm(tmp_path, capsys, monkeypatch):
    bench = tmp_path / "b.jsonl"
    bench.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    afile = tmp_path / "afile"
    afile.write_text("x")
    err = _error_line(_eval_argv(bench, afile), capsys)
    assert f"--output-dir {afile} is a file; give a folder" in err
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name)
    )
    argv = [*_eval_argv(bench, tmp_path / "out"), "--engine", "vllm"]
    err = _error_line(argv, capsys)
    assert "--engine vllm: vLLM is not installed" in err and "--engine transformers" in err


# --- 5-6. reward module:function names --------------------------------------------------------


def test_reward_module_import_errors_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "synerr_t.py").write_text("def f(completion, **kw) return 1.0\n")
    (tmp_path / "raises_t.py").write_text("x = 1\nraise RuntimeError('boom')\n")
    (tmp_path / "needsdep_t.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "fine_t.py").write_text("def f(completion, **kw):\n    return 1.0\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"No module named 'fine_t'.*PYTHONPATH=\. alignlib"):
        resolve_reward("fine_t:f")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"synerr_t\.py line 1: SyntaxError: "):
        resolve_reward("synerr_t:f")
    with pytest.raises(ValueError, match=r"raised RuntimeError: boom \(.*raises_t\.py line 2\)"):
        resolve_reward("raises_t:f")
    with pytest.raises(ValueError, match="imports 'no_such_dependency_xyz', which is not"):
        resolve_reward("needsdep_t:f")
    only_as_oracle = r"reward_model:PATH is supported only as iterative\.oracle"
    with pytest.raises(ValueError, match=only_as_oracle):
        resolve_reward("reward_model:/some/rm")
    assert resolve_reward("fine_t:f")("x") == 1.0
    for name in ("synerr_t", "raises_t", "needsdep_t", "fine_t"):
        sys.modules.pop(name, None)


def test_train_cli_names_the_reward_key_for_a_syntax_error(tmp_path, capsys, monkeypatch):
    (tmp_path / "synerr_cli_t.py").write_text("def f(completion, **kw) return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _run_config(tmp_path, algorithm={"name": "grpo"})
    del cfg["iterative"]
    cfg["rollout"] = {"n": 2, "max_new_tokens": 2}
    cfg["online"] = {"prompts_per_step": 1, "micro_batch_size": 2}
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    err = _error_line(["train", str(path), "online.rewards=[{name: synerr_cli_t:f}]"], capsys)
    assert "online.rewards[0].name:" in err and "synerr_cli_t.py line 1: SyntaxError" in err


# --- 7. alignlib.Trainer accepts a RunConfig, a path or a dict --------------------------------


def test_trainer_accepts_a_path_a_dict_and_refuses_other_types(tmp_path):
    import alignlib

    cfg = _run_config(tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert alignlib.Trainer is Trainer
    assert isinstance(Trainer(str(path)).config, RunConfig)
    assert Trainer(path).config.iterative.oracle == "math"
    assert Trainer(cfg).config.output_dir == str(tmp_path / "run")
    assert Trainer(load_config(path)).config.algorithm.name == "inpo"
    with pytest.raises(ConfigError, match=r"config dict: .*train\.batch_size"):
        Trainer({**cfg, "train": {**cfg["train"], "batch_size": "many"}})
    with pytest.raises(ConfigError, match="does not exist"):
        Trainer(tmp_path / "missing.yaml")
    for bad, name in ((None, "NoneType"), (3, "int")):
        with pytest.raises(TypeError, match=f"a config path or a dict; got {name}"):
            Trainer(bad)  # type: ignore[arg-type]
