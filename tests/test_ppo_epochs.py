"""`online.ppo_epochs` (verl's ppo_epochs, TRL's num_iterations, GRPO's μ): every pass over a
rollout batch takes its mini-batches again, in the same order, against the same π_old and the
same advantages; the later passes see the moved policy; the schedule counts every update; a
critic steps with the policy; GRPO still learns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import alignlib.trainer.loop as loop
from alignlib.config import load_config
from alignlib.trainer.loop import Trainer
from tests.test_online import assert_reward_rises, make_config

pytestmark = pytest.mark.usefixtures("one_thread")


def recorded_updates(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """(mini-batch, result) of every optimizer update the loop makes."""
    seen: list[tuple[Any, Any]] = []
    original = loop.update

    def update(kernel, estimator, optimizer_step, batch, step, seed=0):
        result = original(kernel, estimator, optimizer_step, batch, step, seed)
        seen.append((batch, result))
        return result

    monkeypatch.setattr(loop, "update", update)
    return seen


def trained_state(config: Path) -> Any:
    """Train ``config`` to its end through the loop; its final TrainState."""
    trainer = Trainer(load_config(config))
    source = trainer.source()
    state = trainer.state(source)
    loop.run(state, source, trainer.output_dir)
    return state


@pytest.mark.parametrize("mini_batches", [1, 2])
def test_each_pass_reuses_the_batch_and_its_old_logprobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mini_batches: int
) -> None:
    seen = recorded_updates(monkeypatch)
    online = {"prompts_per_step": 4, "mini_batches": mini_batches, "ppo_epochs": 3}
    config = load_config(make_config(tmp_path, train={"max_steps": 2}, online=online))
    trainer = Trainer(config)
    source = trainer.source()
    per_step = mini_batches * 3
    assert source.optimizer_steps == 2 * per_step  # the schedule's length counts every update
    result = loop.run(trainer.state(source), source, trainer.output_dir)
    assert len(seen) == 2 * per_step
    for step in range(2):
        updates = seen[step * per_step : (step + 1) * per_step]
        for j in range(mini_batches):  # mini-batch j in passes 0, 1, 2
            first, *later = [updates[epoch * mini_batches + j][0] for epoch in range(3)]
            assert first.fields.old_logprobs is not None and not first.on_policy
            for batch in later:
                assert torch.equal(batch.rows.input_ids, first.rows.input_ids)
                assert torch.equal(batch.fields.old_logprobs, first.fields.old_logprobs)
                assert torch.equal(batch.fields.rewards, first.fields.rewards)
        # The first update of a step is on the sampling policy; later passes on a moved one.
        kl = [abs(r.metrics["grpo/ppo_kl"]) for _, r in updates]
        assert kl[0] < 1e-6 and all(k > 1e-6 for k in kl[mini_batches:]), kl
    assert result.history[-1]["skipped_steps"] == 0


def test_a_critic_takes_a_step_with_every_policy_update(tmp_path: Path) -> None:
    online = {"prompts_per_step": 4, "mini_batches": 1, "ppo_epochs": 2}
    config = make_config(
        tmp_path, algorithm={"name": "ppo_gae"}, train={"max_steps": 2}, online=online
    )
    state = trained_state(config)
    assert state.optimizer_step.taken == 4
    assert state.critic is not None and state.critic.optimizer_step.taken == 4


def test_grpo_learns_with_two_passes(tmp_path: Path) -> None:
    assert_reward_rises(tmp_path, {"name": "grpo"}, ppo_epochs=2)
