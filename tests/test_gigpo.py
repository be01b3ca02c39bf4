"""GiGPO beyond the closed forms of test_gradient_identity.py: where the trainer marks each
turn's anchor state (the tokens the environment showed before it; the prompt for turn 1), that
a multi-turn run hands those states to the advantage and learns, and the preset's one-line
error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_environment import TOKENIZER, ScriptedEngine, prompts, runner, write_config

from alignlib import algorithms
from alignlib.config import load_config
from alignlib.estimator import AnchorStateAdvantage, Role
from alignlib.rollout.base import SamplingParams
from alignlib.trainer.loop import Trainer
from alignlib.trainer.online_rollout import TrainRows
from alignlib.trainer.online_update import collate_rows
from alignlib.trainer.step_rewards import state_id

pytestmark = pytest.mark.usefixtures("one_thread")


def turn_ends(loss_mask: list[int]) -> list[int]:
    return [
        t
        for t, m in enumerate(loss_mask)
        if m and (t + 1 == len(loss_mask) or not loss_mask[t + 1])
    ]


def test_each_turn_end_carries_the_state_it_acted_from() -> None:
    """Three turns with the same observation between them: turn 1 acts from the episode's own
    prompt (one id per prompt), turns 2 and 3 from the observation's tokens (one id for all)."""
    engine, (ids, rows) = ScriptedEngine(), prompts()
    out = runner(max_turns=3).run(engine, ids, rows, SamplingParams(n=2, max_new_tokens=64, seed=5))
    train = TrainRows()
    for p, gens in enumerate(out):
        for gen in gens:
            train.add(ids[p], gen.token_ids, Role.SAMPLE, p, 0.0, gen.logprobs, gen.loss_mask)
    states = collate_rows(train, TOKENIZER.pad_token_id).step_states
    observation = state_id(TOKENIZER.encode(" result: 7 "))
    row = 0
    for p, gens in enumerate(out):
        for gen in gens:
            start = len(ids[p])
            marked = (states[row] >= 0).nonzero().flatten().tolist()
            assert marked == [start + t for t in turn_ends(gen.loss_mask)]
            assert states[row, marked].tolist() == [state_id(ids[p]), observation, observation]
            row += 1
    assert state_id(ids[0]) != state_id(ids[1])


def test_a_multi_turn_run_groups_steps_by_state_and_learns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GiGPO on an episode whose reward only the turn after the observation earns: every row
    reaches the advantage with one state per turn, and the reward rises."""
    seen: list[torch.Tensor] = []
    compute = AnchorStateAdvantage.compute

    def spied(self: AnchorStateAdvantage, batch: Any, *args: Any) -> Any:
        assert batch.step_states is not None
        seen.append((batch.step_states >= 0).sum(-1))
        return compute(self, batch, *args)

    monkeypatch.setattr(AnchorStateAdvantage, "compute", spied)
    environment = {"name": "online_environments:ScoreLastTurn", "max_turn_tokens": 4}
    overrides = ["train.max_steps=16", "algorithm.name=gigpo"]
    result = Trainer(load_config(write_config(tmp_path, environment), overrides)).train()
    turns = torch.cat(seen).float()
    assert float(turns.mean()) > 1.5 and int(turns.max()) == 2
    rewards = [h["rollout/reward_mean"] for h in result.history]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > 2 * first and last > first + 0.15, rewards


def test_an_unknown_form_is_one_line() -> None:
    with pytest.raises(ValueError, match="gigpo: form must be 'paper' or 'released'"):
        algorithms.get("gigpo", form="code")


def test_the_logged_step_group_size_is_the_token_mean_of_shared_states() -> None:
    """`gigpo/step_group_size`: over trained tokens, how many steps of the task share the
    token's anchor state (1 everywhere would make GiGPO GRPO); by loops, and the same summed
    over micro-batches."""
    from collections import Counter

    from closed_forms_gigpo import agent_batch, turns_of

    b = agent_batch(seed=1)
    ends = {
        (i, k): (int(b.group_ids[i]), int(b.step_states[i, turn[-1]]))
        for i in range(b.num_rows)
        for k, turn in enumerate(turns_of(b, i))
    }
    sizes = Counter(ends.values())
    weighted = [
        (sizes[ends[i, k]], len(turn))
        for i in range(b.num_rows)
        for k, turn in enumerate(turns_of(b, i))
    ]
    want = sum(s * n for s, n in weighted) / sum(n for _, n in weighted)
    estimator = algorithms.get("gigpo")
    assert float(estimator(b).metrics["gigpo/step_group_size"]) == pytest.approx(want)
    prepared = estimator.prepare(b)
    parts = [estimator(m).metrics["gigpo/step_group_size"] for m in prepared.split(3)]
    assert float(sum(parts)) == pytest.approx(want)
    assert want > 1.5 and min(sizes.values()) == 1  # both shared and lone states occur
