"""GMPO (`gmpo`): loss and gradient equal TRL's own ``GMPOTrainer._compute_loss`` (called with a
stand-in ``self`` that returns fixed per-token log-probs) in float64, with and without its KL
term; an outlier token ratio moves the row's weight only by its |y|-th root; it trains online."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from batches import leaf, rl_batch
from closed_forms_frontier import advantages
from trl_stubs import trl_compute_loss

from alignlib import algorithms
from alignlib.config import load_config
from alignlib.estimator import Batch
from alignlib.trainer.loop import Trainer
from tests.test_online import make_config

trl = pytest.importorskip("trl")


def trl_gmpo(b: Batch, adv: torch.Tensor, eps: tuple[float, float], beta: float):
    """TRL's GMPO loss and d loss / d log π for the batch's rows."""
    from trl.experimental.gmpo.gmpo_trainer import GMPOTrainer

    inputs = {
        "advantages": adv,
        "old_per_token_logps": b.old_logprobs,
        "ref_per_token_logps": b.ref_logprobs,
    }
    settings = {"top_entropy_quantile": 1.0, "epsilon_low": eps[0], "epsilon_high": eps[1]}
    return trl_compute_loss(GMPOTrainer._compute_loss, b, inputs, beta=beta, **settings)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("params", "eps", "beta"),
    [({}, (0.4, 0.4), 0.0), ({"eps_low": 0.1, "eps_high": 0.2, "kl_coef": 0.05}, (0.1, 0.2), 0.05)],
)
def test_loss_and_gradient_equal_trls(seed: int, params: dict, eps: tuple, beta: float) -> None:
    b = rl_batch(spread=0.6, seed=seed)
    estimator = algorithms.get("gmpo", **params)
    out = estimator(estimator.prepare(b))
    ours = torch.autograd.grad(out.loss, b.logprobs)[0]
    loss, theirs = trl_gmpo(b, advantages(b), eps, beta)
    assert float(out.loss) == pytest.approx(float(loss), rel=1e-12, abs=1e-14)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-14)
    assert float(out.metrics["gmpo/clipfrac"]) > 0  # the clip binds on some tokens


def test_an_outlier_ratio_moves_the_row_weight_by_its_root() -> None:
    """One token's ratio ×e^1.0 in a row of 8 (below the ratio floor, Â < 0, so unclipped):
    GMPO's weight of that row grows by e^(1/8); PPO's ratio of that token by e."""
    b = rl_batch(num_groups=1, group_size=2, width=10, seed=0, spread=0.0)
    mask = torch.zeros_like(b.mask)
    mask[:, :8] = 1
    rewards = torch.tensor([1.0, 0.0], dtype=b.rewards.dtype)
    old = b.logprobs.detach().clone()
    logprobs = old.clone()
    logprobs[1, 3] += 1.0
    moved = Batch(
        logprobs=leaf(logprobs), mask=mask, old_logprobs=old, rewards=rewards, group_ids=b.group_ids
    )
    estimator = algorithms.get("gmpo", eps_low=0.4, eps_high=0.4)
    ratio = estimator(estimator.prepare(moved)).metrics["gmpo/geo_ratio"]
    # geo_ratio averages over the units of both rows: row 0 at 1, row 1 at e^(1/8) (δ = 1 > 0
    # with Â < 0 is the unclipped side).
    want = (1 + math.exp(1.0 / 8)) / 2
    assert float(ratio) == pytest.approx(want, rel=1e-12)


def test_gmpo_trains_online(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, algorithm={"name": "gmpo"}, online={"prompts_per_step": 4, "mini_batches": 2}
    )
    result = Trainer(load_config(config)).train()
    for record in result.history:
        assert record["skipped_steps"] == 0
    last = result.history[-1]
    assert last["gmpo/geo_ratio"] != 1.0  # the second mini-batch sees a moved policy
