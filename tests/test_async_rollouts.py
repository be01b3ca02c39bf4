"""Off-policy rollouts generated ahead (`online.max_staleness`), on CPU with two Ray rollout
workers: every batch is at most k versions behind, and the tiny model's reward still rises in
the synchronous run's step budget; k = 1 is reproducible; bad settings are one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray
from test_online import make_config

from alignlib.config import load_config
from alignlib.trainer.loop import Trainer

STEPS = 8
pytestmark = pytest.mark.usefixtures("one_thread")


def run(tmp: Path, name: str, k: int) -> Any:
    path = make_config(
        tmp,
        name,
        train={"max_steps": STEPS, "seed": 0},
        rollout={"n": 8, "max_new_tokens": 4, "num_workers": 2, "timeout_s": 120},
        online={
            "prompts_per_step": 4,
            "micro_batch_size": 16,
            "max_staleness": k,
            "rollout_correction": {"mode": "tis", "cap": 2.0},
        },
    )
    return Trainer(load_config(path)).train()


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Any:
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def rewards(result: Any) -> list[float]:
    return [h["rollout/reward_mean"] for h in result.history if "rollout/reward_mean" in h]


def test_one_step_off_stays_within_its_bound_and_learns(tmp_path: Path) -> None:
    sync = run(tmp_path, "sync", 0)
    ahead = run(tmp_path, "ahead", 1)
    stale = [h["rollout/staleness"] for h in ahead.history if "rollout/staleness" in h]
    assert len(stale) == STEPS and stale[0] == 0.0 and set(stale[1:]) == {1.0}
    for result in (sync, ahead):
        got = rewards(result)
        assert sum(got[-3:]) / 3 > sum(got[:3]) / 3, got
    again = run(tmp_path, "again", 1)
    assert rewards(again) == rewards(ahead), "k = 1 samples from fixed weight versions"


def test_generating_ahead_needs_workers_and_a_correction(tmp_path: Path) -> None:
    path = make_config(tmp_path, online={"max_staleness": 1})
    with pytest.raises(ValueError, match=r"online.max_staleness 1: generating ahead needs Ray"):
        Trainer(load_config(path)).train()


def test_episodes_are_generated_ahead_too(tmp_path: Path) -> None:
    """The background generator plays multi-turn episodes like the synchronous collector."""
    environment = {"name": "online_environments:ScoreLastTurn", "max_turn_tokens": 3}
    path = make_config(
        tmp_path,
        train={"max_steps": 3, "seed": 0},
        rollout={"n": 4, "max_new_tokens": 9, "num_workers": 2, "timeout_s": 120},
        online={
            "max_staleness": 1,
            "rollout_correction": {"mode": "tis", "cap": 2.0},
            "environment": environment,
            "rewards": [{"name": "environment"}],
        },
    )
    result = Trainer(load_config(path)).train()
    stale = [h["rollout/staleness"] for h in result.history]
    assert stale == [0.0, 1.0, 1.0]
    assert all(h["rollout/turns"] > 1.5 for h in result.history)
