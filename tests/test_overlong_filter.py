"""DAPO's overlong filtering (`online.overlong_filter`): a completion cut at the length limit
trains on none of its tokens, its reward still enters its group's baseline; off, nothing
changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignlib.config import load_config
from alignlib.estimator import Role, RowPlan
from alignlib.rollout.base import Generation
from alignlib.trainer.loop import Trainer
from alignlib.trainer.online_rollout import Rollouts, build_rows
from tests.test_online import make_config, spy

pytestmark = pytest.mark.usefixtures("one_thread")


def generation(ids: list[int], finish: str, loss_mask: list[int] | None = None) -> Generation:
    return Generation(
        0, list(ids), [0.0] * len(ids), "", [0.0] * len(ids), finish, 0, loss_mask=loss_mask
    )


def rollouts() -> Rollouts:
    gens = [
        [
            generation([5, 6, 7], "length"),
            generation([5, 2], "stop"),
            generation([8, 9, 3, 4], "length", loss_mask=[1, 0, 0, 1]),  # an episode, cut
            generation([8, 9, 2], "stop", loss_mask=[1, 0, 1]),
        ]
    ]
    return Rollouts(
        rows=[{"solution": "s"}],
        prompt_ids=[[1]],
        generations=gens,
        rewards=torch.tensor([[0.0, 1.0, 0.5, 0.25]]),
        correct=torch.tensor([[False, True, False, False]]),
    )


def plan() -> RowPlan:
    """The four rollouts, then the prompt's demonstration (an HPT/LUFFY-like plan)."""
    return RowPlan(
        prompt_index=torch.zeros(5, dtype=torch.long),
        sample_index=torch.tensor([0, 1, 2, 3, -1]),
        roles=torch.tensor([int(Role.SAMPLE)] * 4 + [int(Role.DEMO)]),
        rewards=torch.tensor([0.0, 1.0, 0.5, 0.25, 1.0]),
        keep=torch.zeros(1, dtype=torch.bool),
    )


def test_truncated_rollouts_train_on_no_token_and_keep_their_reward() -> None:
    kept = build_rows(rollouts(), plan(), lambda row: [4, 2])
    filtered = build_rows(rollouts(), plan(), lambda row: [4, 2], drop_truncated=True)
    assert kept.loss_masks == [None, None, [1, 0, 0, 1], [1, 0, 1], None]
    assert filtered.loss_masks == [[0, 0, 0], None, [0, 0, 0, 0], [1, 0, 1], None]
    assert filtered.sequences == kept.sequences
    assert filtered.rewards == kept.rewards == [0.0, 1.0, 0.5, 0.25, 1.0]


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("overlong_filter", [False, True])
def test_a_step_of_only_truncated_rollouts_moves_nothing_when_filtered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overlong_filter: bool
) -> None:
    """Every completion of a random tiny model is cut at 3 tokens: filtered, the step has no
    token to train on (loss 0, weights unchanged); unfiltered, the same rollouts move them."""
    seen = spy(monkeypatch)
    config = make_config(
        tmp_path,
        train={"max_steps": 1},
        rollout={"n": 4, "max_new_tokens": 3},
        online={"overlong_filter": overlong_filter},
    )
    trainer = Trainer(load_config(config))
    before = weights(trainer)
    trainer.train()
    generations = [g for r in seen["rollouts"] for gens in r.generations for g in gens]
    assert generations and all(g.finish_reason == "length" for g in generations)
    rows = seen["rows"][0]
    assert len(set(rows.rewards)) > 1  # the groups had advantages to train on
    changed = any(not torch.equal(before[k], v) for k, v in weights(trainer).items())
    assert changed != overlong_filter
    masks = rows.loss_masks
    assert all(m is not None and not any(m) for m in masks) == overlong_filter
