"""GDPO online: every row carries each reward's own value and weight, their weighted sum is
the row's reward, and a run trains on them (the estimator's math: test_gradient_identity)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from alignlib.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rows_carry_each_rewards_value_and_weight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import alignlib.trainer.update as update
    from alignlib.trainer.loop import Trainer
    from tests.test_online import make_config

    rewards = [
        {"name": "online_rewards:digit_share"},
        {"name": "online_rewards:has_digit", "weight": 0.5},
    ]
    config = make_config(
        tmp_path,
        algorithm={"name": "gdpo"},
        online={"rewards": rewards, "mini_batches": 2},
        train={"max_steps": 2},
    )
    seen: list[Any] = []
    accumulate = update.accumulate

    def checking(kernel: Any, estimator: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(batch.fields)
        return accumulate(kernel, estimator, batch, *args, **kwargs)

    monkeypatch.setattr(update, "accumulate", checking)
    history = Trainer(load_config(config)).train().history
    assert len(seen) == 4
    for fields in seen:
        parts, weights = fields.reward_parts, fields.reward_weights
        assert parts.shape == weights.shape == (fields.num_rows, 2)
        assert torch.equal(weights, torch.tensor([[1.0, 0.5]]).expand_as(weights))
        assert torch.allclose((parts * weights).sum(-1), fields.rewards.float(), atol=1e-6)
        assert set(parts[:, 1].tolist()) <= {0.0, 1.0}  # has_digit's own 0/1, not weighted
    assert all(torch.isfinite(torch.tensor(r["gdpo/loss"])) for r in history)
