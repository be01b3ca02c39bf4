"""ReMax end to end: one greedy completion per prompt is sampled (temperature 0, the rollout's
length cap) and scored by the same rewards, every row of the prompt carries its reward as the
baseline, the advantage is R − R_greedy, and dynamic sampling keeps a group whose rows agree
with each other but not with the greedy completion. The gradient's closed form is in
test_gradient_identity.py (closed_forms_reinforce.py); that it learns, in test_online.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from batches import rl_batch
from test_online import make_config, spy

import alignlib.trainer.online_collect as online_collect
from alignlib import algorithms
from alignlib.config import load_config
from alignlib.estimator import EstimatorInputError, Role
from alignlib.rollout.base import SamplingParams
from alignlib.trainer.loop import Trainer
from alignlib.trainer.online_rollout import TrainRows, informative_groups

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_row_carries_its_prompts_greedy_reward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy(monkeypatch)
    calls: list[SamplingParams] = []
    sampled_seconds: list[float] = []
    sample = online_collect.RolloutCollector.sample

    def recorded(self: Any, engine: Any, prompt_ids: Any, rows: Any, sampling: SamplingParams):
        calls.append(sampling)
        generations, seconds = sample(self, engine, prompt_ids, rows, sampling)
        if sampling.temperature > 0:
            sampled_seconds.append(seconds)
        return generations, seconds

    monkeypatch.setattr(online_collect.RolloutCollector, "sample", recorded)
    config = make_config(tmp_path, algorithm={"name": "remax"}, train={"max_steps": 2})
    result = Trainer(load_config(config)).train()
    greedy = [c for c in calls if c.temperature == 0]
    assert len(greedy) == 2 and all(c.n == 1 and c.max_new_tokens == 6 for c in greedy)
    for step, rows in enumerate(seen["rows"]):
        sampled, baseline = seen["rollouts"][2 * step : 2 * step + 2]
        assert baseline.rewards.shape == (4, 1) and sampled.rewards.shape == (4, 4)
        assert rows.baselines == [float(baseline.rewards[g, 0]) for g in rows.group_ids]
        assert sampled.baselines is None  # scored first, then given the greedy rewards
        want = float(baseline.rewards.mean())
        assert result.history[step]["rollout/greedy_reward_mean"] == pytest.approx(want)
        # the greedy generation stays out of the sampled rollouts' time (their tokens per s)
        assert result.history[step]["time/rollout_s"] == pytest.approx(sampled_seconds[step])


def test_the_advantage_is_the_reward_less_the_greedy_reward() -> None:
    b = rl_batch()
    greedy = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)[b.group_ids]
    out = algorithms.get("remax")(b.replace(baseline_rewards=greedy))
    grad = torch.autograd.grad(out.loss, b.logprobs)[0]
    want = -(b.rewards - greedy).unsqueeze(-1) * b.mask / b.num_rows
    assert torch.allclose(grad, want, atol=1e-12)


def test_without_a_greedy_reward_the_estimator_says_what_is_missing() -> None:
    with pytest.raises(EstimatorInputError, match="baseline_rewards"):
        algorithms.get("remax")(rl_batch())


def rows_of(rewards: list[list[float]], baselines: list[float]) -> TrainRows:
    rows = TrainRows()
    for g, (group, baseline) in enumerate(zip(rewards, baselines, strict=True)):
        for r in group:
            rows.add([1], [2, 3], Role.SAMPLE, g, r, baseline=baseline)
    return rows


def test_dynamic_sampling_keeps_groups_that_differ_from_their_greedy_reward() -> None:
    rows = rows_of([[1, 1], [0, 0], [1, 0], [0, 0]], [0.0, 0.0, 1.0, 1.0])
    assert informative_groups(rows, distinguishing={"baseline_rewards"}) == [0, 2, 3]
    assert informative_groups(rows) == [2]  # a group baseline: only unequal rewards count
