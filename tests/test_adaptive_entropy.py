"""Skywork-OR1's adaptive entropy control: the coefficient follows the rule step by step, the
bonus acts only at or below the target (its gradient −c/N on each valid token's entropy), its
state survives a checkpoint, and a run's logged coefficient climbs by Δ per optimizer step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from batches import rl_batch

from alignlib.config import load_config
from alignlib.estimator import AdaptiveEntropyBonus, UnifiedEstimator


def rule(entropies: list[float], coef: float, target: float, delta: float, top: float):
    """(c after each step, the coefficient the next step applies), from the paper's rule."""
    currents, applied = [], []
    for h in entropies:
        coef = min(top, coef + delta) if h <= target else max(0.0, coef - delta)
        currents.append(coef)
        applied.append(coef if h <= target else 0.0)
    return currents, applied


def test_the_coefficient_follows_the_rule() -> None:
    bonus = AdaptiveEntropyBonus(coef=0.0, target=1.0, delta=0.1, coef_max=0.25)
    entropies = [0.5, 0.5, 2.0, 0.5, 0.5, 0.5, 3.0, 3.0, 3.0, 3.0]
    currents, applied = rule(entropies, 0.0, 1.0, 0.1, 0.25)
    assert bonus.applied == 0.0  # nothing observed yet: no bonus
    for h, current, gate in zip(entropies, currents, applied, strict=True):
        bonus.observe({"entropy/mean": h, "other/mean": 99.0})
        assert bonus.current == pytest.approx(current) and bonus.applied == pytest.approx(gate)
    assert bonus.current == 0.0  # floored at coef_min


@pytest.mark.parametrize("observed", [None, 0.1, 5.0])
def test_the_gradient_is_the_gated_coefficient_over_the_token_count(observed: float | None) -> None:
    batch = rl_batch()
    bonus = AdaptiveEntropyBonus(coef=0.3, target=1.0, delta=0.0)
    estimator = UnifiedEstimator(terms=[bonus])
    if observed is not None:
        estimator.observe({"entropy/mean": observed})
    out = estimator(batch)
    grad = torch.autograd.grad(out.loss, batch.entropy, allow_unused=True)[0]
    grad = torch.zeros_like(batch.entropy) if grad is None else grad
    gate = 0.3 if observed is not None and observed <= 1.0 else 0.0
    want = -gate * batch.mask / batch.mask.sum()
    assert torch.allclose(grad, want, atol=1e-15)
    mean = float((batch.entropy * batch.mask).sum() / batch.mask.sum())
    assert float(out.metrics["entropy/mean"]) == pytest.approx(mean)
    assert float(out.metrics["entropy/coef"]) == pytest.approx(0.3)


def test_the_state_survives_a_checkpoint() -> None:
    def estimator() -> UnifiedEstimator:
        return UnifiedEstimator(terms=[AdaptiveEntropyBonus(target=1.0, delta=0.05)])

    first = estimator()
    for h in (0.2, 0.4, 1.5, 0.3):
        first.observe({"entropy/mean": h})
    second = estimator()
    second.load_state_dict(first.state_dict())
    bonus = second.terms[0]
    assert isinstance(bonus, AdaptiveEntropyBonus)
    assert bonus.current == pytest.approx(0.1) and bonus.applied == pytest.approx(0.1)


@pytest.mark.usefixtures("one_thread")
def test_a_run_below_its_target_raises_the_coefficient_every_step(tmp_path: Path) -> None:
    from alignlib.trainer.loop import Trainer
    from tests.test_online import make_config

    config = make_config(
        tmp_path,
        algorithm={"name": "grpo", "adaptive_entropy": {"target": 100.0, "delta": 0.01}},
        train={"max_steps": 3},
    )
    history = Trainer(load_config(config)).train().history
    coefs = [r["entropy/coef"] for r in history if "entropy/coef" in r]
    assert coefs == pytest.approx([0.0, 0.01, 0.02])
    assert all(0 < r["entropy/mean"] < 100.0 for r in history if "entropy/mean" in r)
