"""DPPO beyond its closed form (closed_forms_dppo.py, checked in test_gradient_identity.py):
both sides of its trust region act on the test batches, it refuses a second rollout
correction, and online the trainer hands it the sampling engine's log-probs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from closed_forms_dppo import engine_batch

from alignlib import algorithms
from alignlib.config import load_config
from alignlib.estimator import KLPenalty, rollout_correction
from alignlib.estimator.registry import ParameterError


@pytest.mark.parametrize("divergence", ["tv", "kl"])
def test_the_trust_region_masks_both_ways_and_keeps_the_rest(divergence: str) -> None:
    deltas = {"delta_low": 0.02, "delta_high": 0.03} if divergence == "kl" else {}
    for seed in range(3):
        metrics = algorithms.get("dppo", divergence=divergence, **deltas)(engine_batch(seed))
        up, down = (
            float(metrics.metrics["dppo/masked_up"]),
            float(metrics.metrics["dppo/masked_down"]),
        )
        assert up > 0 and down > 0 and up + down < 0.5, (seed, up, down)


def test_dppo_refuses_a_second_rollout_correction() -> None:
    with pytest.raises(ValueError, match=r"DivergenceTrustRegion already weighs the loss"):
        algorithms.get("dppo").with_rollout_correction(rollout_correction({"mode": "tis"}))


def test_a_kl_to_pi_old_is_not_importance_weighted() -> None:
    with pytest.raises(ParameterError, match=r"importance_weighted.*to='ref'"):
        KLPenalty(to="old", importance_weighted=True)


def test_an_online_run_measures_the_region_from_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DPPO reads μ, the engine's log-probs: the online trainer puts them in every mini-batch."""
    import alignlib.trainer.update as update
    from alignlib.trainer.loop import Trainer
    from tests.test_online import make_config

    config = make_config(
        tmp_path, algorithm={"name": "dppo"}, online={"mini_batches": 2}, train={"max_steps": 1}
    )
    seen: list[bool] = []
    accumulate = update.accumulate

    def checking(kernel: Any, estimator: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(batch.fields.behaviour_logprobs is not None)
        return accumulate(kernel, estimator, batch, *args, **kwargs)

    monkeypatch.setattr(update, "accumulate", checking)
    result = Trainer(load_config(config)).train()
    assert seen == [True, True]
    assert "dppo/masked_frac" in result.history[-1]
