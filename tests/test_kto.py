"""KTO in the offline trainer: the KL rows' mismatched pairs, their no-grad pass (no gradient
pass runs over them), the adapter-off reference computed for the whole mini-batch before
``prepare`` reads it, and micro-batch invariance end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from alignlib.config import load_config
from alignlib.data.formats import with_kl_completions
from alignlib.trainer.loop import Trainer
from alignlib.trainer.step import LogprobKernel

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = [
    {
        "prompt": f"What is {a} + {b}?",
        "completion": f"{a} + {b} = \\boxed{{{a + b + wrong}}}",
        "label": not wrong,
    }
    for a, b in [(2, 3), (4, 4), (7, 1), (6, 3)]
    for wrong in (0, 1)
]


def run(tmp: Path, name: str, **sections: dict[str, Any]) -> list[dict[str, float]]:
    data = tmp / "kto.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg: dict[str, Any] = {
        "output_dir": str(tmp / name),
        "model": {"name_or_path": "tiny:llama"},
        "data": {"path": str(data), "shuffle": False},
        "algorithm": {"name": "kto", "params": {"beta": 0.5}},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "schedule": "constant"},
        "train": {"batch_size": 8, "micro_batch_size": 8, "max_steps": 3},
        "logging": {"progress": False, "tensorboard": False, "plot": False},
    }
    for key, values in sections.items():
        cfg[key] = {**cfg.get(key, {}), **values}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Trainer(load_config(path)).train().history


def test_each_prompt_gets_another_prompts_completion() -> None:
    rows = with_kl_completions(ROWS)
    for row in rows:
        assert row["kl_completion"] != row["completion"]
        owner = next(r for r in ROWS if r["completion"] == row["kl_completion"])
        assert owner["prompt"] != row["prompt"]
    assert with_kl_completions(ROWS[:1])[0]["kl_completion"] == ROWS[0]["completion"]


def test_kl_rows_get_a_no_grad_pass_and_no_gradient_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[bool, int]] = []
    original = LogprobKernel.__call__

    def spy(self, rows, indices, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((kwargs.get("grad", True), len(indices)))
        return original(self, rows, indices, **kwargs)

    monkeypatch.setattr(LogprobKernel, "__call__", spy)
    history = run(tmp_path, "spy", train={"max_steps": 1})
    grad_rows = sum(n for grad, n in seen if grad)
    assert grad_rows == len(ROWS)  # the 8 labelled completions, not their 8 KL rows
    assert history[0]["tokens"] > 0 and 0 < history[0]["kto/loss"] < 1


def test_adapter_reference_equals_the_cached_one(tmp_path: Path) -> None:
    """`train.reference: adapter` fills the reference per micro-batch for other methods; KTO's
    prepare reads it for the whole mini-batch first (zeros there would shift every reward)."""
    lora = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}
    cached = run(tmp_path, "cached", lora=lora, train={"reference": "precompute"})
    live = run(tmp_path, "live", lora=lora, train={"reference": "adapter"})
    for want, got in zip(cached, live, strict=True):
        for key in ("loss", "kto/kl", "kto/margin", "kto/chosen_reward", "grad_norm"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    assert cached[-1]["kto/margin"] != 0


def test_micro_batches_do_not_change_the_run(tmp_path: Path) -> None:
    whole = run(tmp_path, "whole")
    split = run(tmp_path, "split", train={"micro_batch_size": 1})
    for want, got in zip(whole, split, strict=True):
        for key in ("loss", "kto/kl", "kto/margin", "grad_norm"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    assert whole[-1]["loss"] < whole[0]["loss"]


def test_unpaired_preference_rows_train_as_the_kto_rows_they_become(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {
            "prompt": ROWS[i]["prompt"],
            "chosen": ROWS[i]["completion"],
            "rejected": ROWS[i + 1]["completion"],
        }
        for i in range(0, len(ROWS), 2)
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    direct = run(tmp_path, "direct")
    unpaired = run(tmp_path, "unpaired", data={"path": str(pairs), "unpair": True})
    for want, got in zip(direct, unpaired, strict=True):
        assert got["loss"] == want["loss"] and got["kto/margin"] == want["kto/margin"]


def test_unpair_needs_preference_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from alignlib.cli import main

    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"prompt": "1 + 1?", "completion": "2"}) + "\n")
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": "tiny:llama"},
        "data": {"path": str(sft), "unpair": True},
        "algorithm": {"name": "kto"},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"data.unpair: {sft} has sft rows; unpairing needs preference rows" in err
    assert "Traceback" not in err


def test_packed_passes_give_the_padded_run(tmp_path: Path) -> None:
    padded = run(tmp_path, "padded")
    packed = run(tmp_path, "packed", train={"packing": True})
    for want, got in zip(padded, packed, strict=True):
        for key in ("loss", "kto/kl", "kto/margin", "grad_norm"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize(
    ("labels", "params", "expected"),
    [
        (
            [True, True, True, False] * 2,
            {},
            "6 desirable and 2 undesirable examples with desirable_weight 1 and "
            "undesirable_weight 1 give λ_D·n_D / (λ_U·n_U) = 3.00, outside the KTO paper's "
            "[1, 4/3]; set algorithm.params.desirable_weight in [0.33, 0.44] or "
            "undesirable_weight in [2.25, 3.00] (not both)",
        ),
        ([True] * 8, {}, "no undesirable (label false) examples: KTO then trains one direction"),
        ([True, True, True, False] * 2, {"undesirable_weight": 2.5}, None),
        ([True, False] * 4, {}, None),
    ],
)
def test_the_label_mix_is_checked_against_the_papers_advice(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    labels: list[bool],
    params: dict[str, float],
    expected: str | None,
) -> None:
    rows = [{**row, "label": label} for row, label in zip(ROWS, labels, strict=True)]
    data = tmp_path / "kto.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": "tiny:llama"},
        "data": {"path": str(data)},
        "algorithm": {"name": "kto", "params": params},
        "train": {"batch_size": 8, "max_steps": 1},
        "logging": {"progress": False, "tensorboard": False, "plot": False},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    from alignlib.cli import main

    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "desirable" in line]
    if expected is None:
        assert warnings == [], warnings
    else:
        assert len(warnings) == 1 and f"alignlib: warning: {data}: {expected}" in warnings[0], err


def test_apo_zero_unpaired_builds_no_kl_rows_and_learns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With z₀ fixed at 0 no KL row is built or scored (KTO scores one per example), the run is
    the same over any micro-batching, and desirable completions rise against undesirable."""
    seen: list[int] = []
    original = LogprobKernel.__call__

    def spy(self, rows, indices, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(len(indices))
        return original(self, rows, indices, **kwargs)

    monkeypatch.setattr(LogprobKernel, "__call__", spy)
    algorithm = {"name": "apo_zero_unpaired", "params": {"beta": 0.5}}
    whole = run(tmp_path, "apo", algorithm=algorithm, train={"max_steps": 4})
    assert set(seen) == {len(ROWS)}  # reference, no-grad and gradient passes: the 8 examples
    seen.clear()
    run(tmp_path, "kto", train={"max_steps": 1})
    assert max(seen) == 2 * len(ROWS)  # KTO scores each example's KL row too
    split = run(
        tmp_path, "apo_split", algorithm=algorithm, train={"max_steps": 4, "micro_batch_size": 2}
    )
    for want, got in zip(whole, split, strict=True):
        for key in ("loss", "apo_zero_unpaired/margin", "grad_norm"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    assert whole[-1]["apo_zero_unpaired/kl"] == 0
    assert whole[-1]["apo_zero_unpaired/margin"] > whole[0]["apo_zero_unpaired/margin"]
