"""Hand-off: final/ gets a model card the Hub renders, and `alignlib push --dry-run` lists what
would be uploaded without touching the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from alignlib import __version__
from alignlib.cli import main
from alignlib.config import load_config
from alignlib.trainer.model_card import base_model, push, render

PAIRS = [
    {"prompt": f"What is {a} + {b}?", "chosen": str(a + b), "rejected": str(a + b + 1)}
    for a, b in [(2, 3), (4, 4), (7, 1), (6, 3)]
]


def run_config(tmp: Path, **logging: object) -> Path:
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    cfg = {
        "output_dir": str(tmp / "run"),
        "model": {"name_or_path": "tiny:llama"},
        "data": {"path": str(data), "shuffle": False},
        "algorithm": {"name": "dpo", "params": {"beta": 0.2}},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "schedule": "constant"},
        "train": {"batch_size": 2, "micro_batch_size": 2, "max_steps": 2},
        "logging": {"progress": False, "tensorboard": False, "plot": True, **logging},
    }
    path = tmp / "dpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("card")
    assert main(["train", str(run_config(tmp))]) == 0
    return tmp / "run"


def test_final_has_a_model_card_with_method_data_steps_metrics_and_config(trained: Path) -> None:
    card = (trained / "final" / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["library_name"] == "transformers" and "dpo" in header["tags"]
    assert "base_model" not in header  # tiny:llama has no Hub id
    assert "**dpo (beta=0.2)**" in card and "for 2 steps" in card
    assert "pairs.jsonl" in card and f"| alignlib | {__version__} |" in card
    assert "## Final metrics" in card and "| loss |" in card
    config = yaml.safe_load(card.split("```yaml")[1].split("```")[0])
    assert config["algorithm"] == {
        "name": "dpo",
        "params": {"beta": 0.2},
        "components": None,
        "mix": None,
        "ld_alpha": None,
        "wpo": False,
        "high_entropy": None,
        "off_policy_mask": None,
        "second_moment_mask": None,
        "adaptive_entropy": None,
    }


def test_push_dry_run_lists_the_upload_without_network(trained: Path, capsys) -> None:
    assert main(["push", str(trained), "me/tiny-dpo", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "would upload to https://huggingface.co/me/tiny-dpo:"
    listed = [line.split("  (")[0] for line in out[1:]]
    assert {"README.md", "config.json", "training_curves.png", "metrics.jsonl"} <= set(listed)
    assert any(name.endswith(".safetensors") for name in listed)


def test_push_of_an_unfinished_run_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["push", str(tmp_path), "me/x", "--dry-run"]) == 2
    assert "does not exist: push a finished run" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        push(tmp_path, "me/x", dry_run=True)


def test_bundled_and_local_base_models(tmp_path: Path) -> None:
    assert base_model("bundled:smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model("Qwen/Qwen2.5-Math-1.5B") == "Qwen/Qwen2.5-Math-1.5B"
    assert base_model(str(tmp_path)) is None and base_model("tiny:llama") is None


def test_lora_card_loads_with_peft(tmp_path: Path) -> None:
    config = load_config(run_config(tmp_path), ["lora.enabled=true"])
    card = render(config, tmp_path / "run")
    assert "library_name: peft" in card and "AutoPeftModelForCausalLM" in card


@pytest.mark.parametrize("repo_id", ["not a repo", "nameonly", "me/a--b", "me/x/y", "mé/x"])
def test_push_refuses_a_bad_repo_id_even_in_a_dry_run(tmp_path: Path, repo_id: str, capsys) -> None:
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "config.json").write_text("{}")
    assert main(["push", str(tmp_path), repo_id, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"repo_id {repo_id!r} is not a Hub repository id: expected OWNER/NAME" in err
    assert main(["push", str(tmp_path), "me/x_y.v2", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("would upload to https://huggingface.co/me/x_y.v2:")


def test_the_method_line_names_every_option_set() -> None:
    from alignlib.config.schema import RunConfig
    from alignlib.trainer.model_card import method

    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": "tiny:llama"},
            "data": {"path": "x.jsonl"},
            "algorithm": {
                "name": "grpo",
                "high_entropy": {"ratio": 0.2},
                "off_policy_mask": {"delta": 0.5},
                "second_moment_mask": {"threshold": 0.04},
            },
            "train": {"reference_sync": {"alpha": 1.0}},
        }
    )
    line = method(config)
    assert line == (
        "grpo, high-entropy tokens {'ratio': 0.2}, off-policy sequence mask {'delta': 0.5}, "
        "second-moment mask (M2PO) {'threshold': 0.04}, reference synced every 512 steps (α=1.0)"
    )


def test_a_mix_is_named_entry_by_entry() -> None:
    from alignlib.config.schema import RunConfig
    from alignlib.trainer.model_card import method

    mix = [{"name": "dpo", "weight": 0.8}, {"name": "sft", "params": {"rows": "chosen"}}]
    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": "tiny:llama"},
            "data": {"path": "x.jsonl"},
            "algorithm": {"mix": mix},
        }
    )
    assert method(config) == "mix: 0.8·dpo + 1·sft (rows=chosen)"
