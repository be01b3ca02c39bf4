"""`algorithm.mix`: a weighted sum of presets from YAML (TRL's `loss_type` list with
`loss_weights`). A mix equals the same sum written in Python and, for MPO, the `mpo` preset
(which test_trl_parity checks against TRL); it trains end to end with each entry's metrics under
its name; and every mistake in it is one line naming the entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from batches import pair_batch, split_gradient

from alignlib import algorithms
from alignlib.config import ConfigError, load_config
from alignlib.config.algorithm import AlgorithmConfig
from alignlib.config.estimator import build_estimator
from alignlib.trainer.loop import Trainer
from tests.test_trainer import config_file, datasets

MPO = [
    {"name": "dpo", "weight": 0.8},
    {"name": "bco_pair", "weight": 0.2},
    {"name": "sft", "params": {"rows": "chosen"}},
]


def mix_config(tmp: Path, algorithm: dict) -> Path:
    """tests/test_trainer.py's DPO config with ``algorithm`` as its algorithm section."""
    path = config_file(tmp, datasets(tmp)["preference"], "dpo")
    config = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(config | {"algorithm": algorithm}))
    return path


def gradient(estimator, seed: int = 0) -> tuple[float, torch.Tensor]:
    batch = pair_batch(seed=seed)
    loss = float(estimator(estimator.prepare(batch)).loss)
    return loss, split_gradient(estimator, batch, 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_mix_is_its_weighted_sum_and_mpo_is_the_preset(seed: int) -> None:
    mix = build_estimator(AlgorithmConfig(mix=MPO))
    loss, grad = gradient(mix, seed)
    preset_loss, preset_grad = gradient(algorithms.get("mpo"), seed)
    assert loss == pytest.approx(preset_loss, rel=1e-12)
    assert torch.allclose(grad, preset_grad, rtol=0, atol=1e-14)
    parts = [(0.8, algorithms.get("dpo")), (0.2, algorithms.get("bco_pair"))]
    parts.append((1.0, algorithms.get("sft", rows="chosen")))
    by_hand = [gradient(estimator, seed) for _, estimator in parts]
    pairs = list(zip(parts, by_hand, strict=True))
    assert loss == pytest.approx(sum(w * part[0] for (w, _), part in pairs))
    want = sum(w * part[1] for (w, _), part in pairs)
    assert torch.allclose(grad, want, rtol=0, atol=1e-14)


def test_the_default_preset_gives_way_to_a_mix() -> None:
    config = AlgorithmConfig.model_validate({"mix": MPO})
    assert config.name is None and len(config.mix or []) == 3


def test_a_yaml_mix_trains_with_each_entry_under_its_name(tmp_path: Path) -> None:
    result = Trainer(load_config(mix_config(tmp_path, {"mix": MPO}))).train()
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] - 1e-3, losses
    last = result.history[-1]
    assert {"dpo/margin", "bco_pair/margin"} <= last.keys(), sorted(last)
    assert any(k.startswith("sft/") for k in last), sorted(last)


@pytest.mark.parametrize(
    ("algorithm", "message"),
    [
        (
            {"mix": [{"name": "dpo"}, {"name": "bco_pairs"}]},
            r"algorithm.mix\[1\].name: .*bco_pair",
        ),
        (
            {"mix": [{"name": "dpo", "params": {"betta": 0.1}}]},
            r"algorithm.mix\[0\].params.betta: not a parameter of dpo \(did you mean 'beta'",
        ),
        (
            {"mix": [{"name": "dpo"}, {"name": "sft", "params": {"rows": "gold"}}]},
            r"algorithm.mix\[1\].params.rows: must be one of all, chosen",
        ),
        ({"mix": [{"name": "dpo", "params": {"beta": -1}}]}, r"algorithm.mix\[0\].params.beta"),
        ({"name": "dpo", "mix": MPO}, "set exactly one of .* \\(given: name, mix\\)"),
        ({"mix": MPO, "params": {"beta": 0.1}}, "with algorithm.mix give each entry its own"),
        ({"mix": []}, "algorithm.mix is empty"),
        (
            {"mix": [{"name": "dpo", "wieght": 2}]},
            r"mix.0.wieght: unknown key \(did you mean 'weight'\?\); valid keys here: name",
        ),
        ({"mix": [{"name": "hpt"}, {"name": "luffy"}]}, "hpt and luffy each decide how rollouts"),
        ({"mix": [{"name": "dpo", "weight": float("nan")}]}, "weight"),
    ],
)
def test_mistakes_in_a_mix_are_one_line(tmp_path: Path, algorithm: dict, message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message) as raised:
        load_config(mix_config(tmp_path, algorithm))
    assert "\n" not in str(raised.value).strip()
