"""Advantages over the whole rollout batch: when one rollout batch is split into several
optimizer mini-batches, a statistic across groups (Lite PPO's batch std, RLOO's and GDPO's
normalization, REINFORCE++'s and GAE's whitening, GPG's α) spans every row of the rollout
batch, as TRL's generation batch and verl's ``compute_advantage`` take it, not each
mini-batch alone.

Each case checks the advantages a mini-batch is prepared with against a float64 closed form
over the whole batch (written here and in closed_forms_*.py by explicit loops), and that the
mini-batch alone would have given different ones (so the case can tell the two apart)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from batches import rl_batch
from closed_forms_frontier import rloo_advantages
from closed_forms_group_baselines import gpg_advantages, graded_batch
from closed_forms_multi_reward import gdpo_advantages, multi_reward_batch
from torch import Tensor

from alignlib import algorithms
from alignlib.estimator import Batch, BatchNormalized, UnifiedEstimator
from tests.test_online import make_config
from tests.test_ppo_epochs import recorded_updates, trained_state

pytestmark = pytest.mark.usefixtures("one_thread")


def lite_ppo_advantages(b: Batch, eps: float = 1e-6) -> Tensor:
    """(R − group mean) / (unbiased std of every reward of the batch + ε)."""
    rewards = b.rewards.tolist()
    mean = sum(rewards) / len(rewards)
    spread = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
    adv = []
    for i, g in enumerate(b.group_ids.tolist()):
        group = [rewards[j] for j, h in enumerate(b.group_ids.tolist()) if h == g]
        adv.append((rewards[i] - sum(group) / len(group)) / (spread + eps))
    return torch.tensor(adv, dtype=torch.float64)


def token_whitened(values: Tensor, mask: Tensor, unbiased: bool, eps: float) -> Tensor:
    """(x − mean) / sqrt(var + eps) over the mask's tokens of the whole batch, by loops."""
    tokens = [float(values[i, t]) for i, t in mask.nonzero().tolist()]
    mean = sum(tokens) / len(tokens)
    var = sum((x - mean) ** 2 for x in tokens) / (len(tokens) - (1 if unbiased else 0))
    return (values - mean) / math.sqrt(var + eps) * mask


def reinforce_pp_advantages(b: Batch) -> Tensor:
    """REINFORCE++-baseline: R − group mean on every completion token, whitened over the batch."""
    rewards = b.rewards.tolist()
    groups = b.group_ids.tolist()
    centred = [r - sum(rewards[j] for j in range(len(rewards)) if groups[j] == groups[i])
               / groups.count(groups[i]) for i, r in enumerate(rewards)]  # fmt: skip
    tokens = torch.tensor(centred, dtype=torch.float64).unsqueeze(-1) * b.mask
    return token_whitened(tokens, b.mask, unbiased=False, eps=1e-8)


def gae_advantages(b: Batch, gamma: float = 1.0, lam: float = 0.95) -> Tensor:
    """GAE per row (the reward on its last completion token), whitened over the batch."""
    adv = torch.zeros_like(b.mask)
    for i in range(b.num_rows):
        positions = b.mask[i].nonzero().flatten().tolist()
        following = 0.0
        for k in reversed(range(len(positions))):
            t = positions[k]
            after = float(b.values[i, positions[k + 1]]) if k + 1 < len(positions) else 0.0
            reward = float(b.rewards[i]) if k == len(positions) - 1 else 0.0
            delta = reward + gamma * after - float(b.values[i, t])
            following = delta + gamma * lam * following
            adv[i, t] = following
    return token_whitened(adv, b.mask, unbiased=True, eps=1e-8)


def with_values(b: Batch) -> Batch:
    gen = torch.Generator().manual_seed(7)
    return b.replace(values=torch.randn(b.mask.shape, generator=gen, dtype=torch.float64))


def reinforce_pp() -> UnifiedEstimator:
    return algorithms.get("ppo", advantage=BatchNormalized(group_baseline=True))


CASES: dict[str, tuple[Callable[[], UnifiedEstimator], Callable[[], Batch], Callable]] = {
    "lite_ppo": (lambda: algorithms.get("lite_ppo"), rl_batch, lite_ppo_advantages),
    "rloo_normalized": (
        lambda: algorithms.get("rloo", normalize_advantages=True),
        rl_batch,
        lambda b: rloo_advantages(b, 0.05, normalize=True),
    ),
    "gdpo": (
        lambda: algorithms.get("gdpo"),
        multi_reward_batch,
        lambda b: torch.tensor(gdpo_advantages(b), dtype=torch.float64),
    ),
    "reinforce_pp_baseline": (reinforce_pp, rl_batch, reinforce_pp_advantages),
    "gpg": (
        lambda: algorithms.get("gpg"),
        graded_batch,
        lambda b: torch.tensor(gpg_advantages(b), dtype=torch.float64),
    ),
    "ppo_gae": (
        lambda: algorithms.get("ppo_gae", kl_coef=0.0),
        lambda: with_values(rl_batch()),
        gae_advantages,
    ),
}


def mini_batch_advantages(estimator: UnifiedEstimator, b: Batch, part: Tensor) -> Tensor:
    """The advantages the policy-gradient term of a prepared mini-batch of ``part`` holds."""
    prepared = estimator.prepare(b.select(part)).prepared
    (key,) = [k for k in prepared if k.endswith(".adv")]
    return prepared[key]


@pytest.mark.parametrize("case", list(CASES))
def test_mini_batches_take_the_rollout_batch_statistics(case: str) -> None:
    make, batch, closed = CASES[case]
    estimator, b = make(), batch()
    expected = closed(b)
    given = estimator.precompute(b)
    assert given, "precompute stored no advantage"
    parts = [torch.nonzero(b.group_ids <= 1).flatten(), torch.nonzero(b.group_ids > 1).flatten()]
    alone_differs = False
    for part in parts:
        handed = b.replace(precomputed=given)
        got = mini_batch_advantages(estimator, handed, part)
        torch.testing.assert_close(got, expected[part], rtol=1e-9, atol=1e-12)
        alone = mini_batch_advantages(estimator, b, part)
        alone_differs |= not torch.allclose(alone, expected[part], rtol=1e-6, atol=1e-9)
    assert alone_differs, "the mini-batches alone gave the rollout batch's advantages"


@pytest.mark.parametrize("case", list(CASES))
def test_one_batch_is_its_own_rollout_batch(case: str) -> None:
    """Unsplit, the precomputed advantages are the batch's own (and the closed form's)."""
    make, batch, closed = CASES[case]
    estimator, b = make(), batch()
    whole = torch.arange(b.num_rows)
    own = mini_batch_advantages(estimator, b, whole)
    handed = mini_batch_advantages(estimator, b.replace(precomputed=estimator.precompute(b)), whole)
    torch.testing.assert_close(handed, own, rtol=0, atol=0)
    torch.testing.assert_close(own, closed(b).to(own.dtype), rtol=1e-9, atol=1e-12)


def test_an_online_run_normalizes_over_its_rollout_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lite PPO, one rollout batch of 4 prompts × 4 samples in 2 mini-batches: each mini-batch
    trains with (R − group mean) / std over all 16 rewards."""
    seen = recorded_updates(monkeypatch)
    online = {"prompts_per_step": 4, "mini_batches": 2}
    config = make_config(
        tmp_path, algorithm={"name": "lite_ppo"}, train={"max_steps": 1}, online=online
    )
    state = trained_state(config)
    assert len(seen) == 2
    fields = [batch.fields for batch, _ in seen]
    rewards = torch.cat([f.rewards for f in fields]).double()
    assert rewards.std() > 0, "the rewards were all equal: nothing to normalize"
    group_ids = torch.cat([f.group_ids for f in fields])
    whole = Batch(logprobs=torch.zeros(len(rewards), 1), mask=torch.ones(len(rewards), 1),
                  rewards=rewards, group_ids=group_ids)  # fmt: skip
    expected = lite_ppo_advantages(whole)
    got = torch.cat([state.estimator.prepare(f).prepared["0.adv"] for f in fields])
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
