"""Turn rewards: an environment's step may return (observation, reward). The reward sits on the
turn's last sampled token, the episode's environment reward is get_reward() plus their sum, GAE
credits each to the tokens before it (float64, against a per-row loop written here), methods
with one advantage per completion see the sum, and a run learns from turn rewards alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import online_environments as envs
import pytest
import torch
from test_critic_math import critic_batch
from test_environment import ScriptedEngine, prompts, runner, write_config
from test_online import spy

from alignlib.algorithms import get as get_preset
from alignlib.cli import main
from alignlib.config import load_config
from alignlib.config.online import RewardSpec
from alignlib.estimator import GAE
from alignlib.rewards import RewardError
from alignlib.rollout.base import SamplingParams
from alignlib.rollout.environment import EpisodeError
from alignlib.rollout.episode_router import EpisodeRouter
from alignlib.trainer.loop import Trainer
from alignlib.trainer.online_rewards import RewardModel

pytestmark = pytest.mark.usefixtures("one_thread")
SAMPLING = SamplingParams(n=2, max_new_tokens=40, seed=3)


def turn_ends(mask: list[int]) -> list[int]:
    """Positions of each model turn's last token: a sampled token the next one is not."""
    return [t for t, m in enumerate(mask) if m and (t + 1 == len(mask) or not mask[t + 1])]


@pytest.mark.parametrize(
    ("factory", "max_turns", "own"),
    [(envs.TurnRewards, 4, 0.0), (envs.TurnRewardsAndOwn, 4, 10.0), (envs.TurnRewards, 2, 0.0)],
)
def test_each_turn_reward_sits_on_its_turns_last_sampled_token(
    factory: Any, max_turns: int, own: float
) -> None:
    ids, rows = prompts()
    out = runner(factory, max_turns=max_turns, max_turn_tokens=3).run(
        ScriptedEngine(), ids, rows, SAMPLING
    )
    turns = min(3, max_turns)  # the environment ends it after 3; the cap may end it sooner
    want = [k / 2 for k in range(1, turns + 1)]  # turn k earns k/2, the last one's included
    for gens in out:
        for gen in gens:
            assert gen.turns == turns and gen.loss_mask is not None
            assert gen.turn_rewards is not None and len(gen.turn_rewards) == len(gen.token_ids)
            ends = turn_ends(gen.loss_mask)
            assert [gen.turn_rewards[t] for t in ends] == want
            assert all(r == 0 for t, r in enumerate(gen.turn_rewards) if t not in ends)
            assert gen.environment_reward == pytest.approx(own + sum(want))


def test_an_environment_without_turn_rewards_carries_none() -> None:
    ids, rows = prompts()
    out = runner(envs.Fixed, max_turns=2).run(ScriptedEngine(), ids, rows, SAMPLING)
    assert all(g.turn_rewards is None and g.environment_reward is None for gs in out for g in gs)


def test_a_step_that_returns_no_number_is_one_line() -> None:
    ids, rows = prompts()
    with pytest.raises(EpisodeError) as caught:
        runner(envs.BadTurnReward).run(ScriptedEngine(), ids, rows, SAMPLING)
    message = str(caught.value)
    assert "\n" not in message and "(observation, reward)" in message and "'high'" in message


def test_several_environments_give_the_silent_one_zero() -> None:
    ids, rows = prompts()
    rows = [{**rows[0], "environment": "turns"}, {**rows[1], "environment": "silent"}]
    router = EpisodeRouter({"turns": runner(envs.TurnRewards), "silent": runner(envs.Fixed)})
    out = router.run(ScriptedEngine(), ids, rows, SamplingParams(n=2, max_new_tokens=12, seed=3))
    assert [g.environment_reward for g in out[1]] == [0.0, 0.0]
    assert all(g.turn_rewards is not None and g.environment_reward for g in out[0])


def test_turn_rewards_no_reward_reads_are_refused() -> None:
    model = RewardModel([RewardSpec(name="online_rewards:one")], 0.5, episodes=True)
    with pytest.raises(RewardError, match=r"add \{name: environment\}"):
        model.score(["a", "b"], [1, 1], [{}, {}], environment=[1.5, None])


# ----------------------------------------------------------------------------------- the math
def loop_turn_gae(turns: torch.Tensor, b: Any, gamma: float, lam: float) -> torch.Tensor:
    """Per row, from its last masked token back: the turn reward where one sits, plus the rest
    of the row's reward (R − Σ turn rewards) on the last token; δ = r + γV' − V, A = δ + γλA'."""
    advantages = torch.zeros_like(b.values)
    for row in range(b.num_rows):
        tokens = b.mask[row].nonzero().flatten().tolist()
        rest = float(b.rewards[row]) - sum(float(turns[row, t]) for t in tokens)
        next_value = next_advantage = 0.0
        for i, t in enumerate(reversed(tokens)):
            reward = float(turns[row, t]) + (rest if i == 0 else 0.0)
            value = float(b.values[row, t])
            advantage = reward + gamma * next_value - value + gamma * lam * next_advantage
            advantages[row, t] = advantage
            next_value, next_advantage = value, advantage
    return advantages


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.7), (1.0, 1.0)])
def test_gae_credits_each_turn_reward_to_the_tokens_before_it(gamma: float, lam: float) -> None:
    b = critic_batch(seed=4)
    gen = torch.Generator().manual_seed(5)
    turns = torch.randn(b.mask.shape, generator=gen, dtype=b.values.dtype)
    turns = turns * b.mask * (torch.rand(b.mask.shape, generator=gen) < 0.3)  # a few turn ends
    b = b.replace(step_rewards=turns, rewards=b.rewards + turns.sum(-1))  # R includes them
    rows = torch.ones(b.num_rows, dtype=torch.bool)
    component = GAE(gamma=gamma, lam=lam, whiten=False)
    want = loop_turn_gae(turns, b, gamma, lam)
    got = component.compute(b, rows, None).values  # type: ignore[arg-type]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(component.returns(b, rows), (want + b.values) * b.mask)
    # Where the rewards sit matters to GAE (λ < 1 or γ < 1), not to their sum at λ = γ = 1.
    at_end = component.compute(b.replace(step_rewards=None), rows, None).values  # type: ignore[arg-type]
    if gamma == lam == 1.0:
        first = b.mask.argmax(-1)
        rows_idx = torch.arange(b.num_rows)
        torch.testing.assert_close(got[rows_idx, first], at_end[rows_idx, first])
    else:
        assert not torch.allclose(got, at_end)
    # Zero turn rewards are no turn rewards.
    zeros = b.replace(step_rewards=torch.zeros_like(turns))
    torch.testing.assert_close(component.compute(zeros, rows, None).values, at_end)  # type: ignore[arg-type]


def test_one_advantage_per_completion_sees_the_sum() -> None:
    """GRPO reads the row's reward, which holds the turn rewards; where they sit is GAE's
    business only."""
    b = critic_batch(seed=2).replace(group_ids=torch.tensor([0, 0, 0, 1, 1, 1]))
    turns = b.mask * 0.25
    grpo = get_preset("grpo")
    plain = grpo(b.replace(old_logprobs=b.logprobs.detach())).loss
    placed = grpo(b.replace(old_logprobs=b.logprobs.detach(), step_rewards=turns)).loss
    assert torch.equal(plain, placed)


# ------------------------------------------------------------------------------------ training
def turn_config(tmp: Path, **sections: Any) -> Path:
    environment = {"name": "online_environments:DigitTurns", "max_turn_tokens": 4}
    return write_config(tmp, environment, **sections)


def test_rows_carry_the_weighted_turn_rewards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy(monkeypatch)
    path = turn_config(tmp_path, rewards=[{"name": "environment", "weight": 2.0}])
    result = Trainer(load_config(path, ["train.max_steps=1"])).train()
    (rollouts,), (rows,) = seen["rollouts"], seen["rows"]
    gens = [g for gs in rollouts.generations for g in gs]
    for gen, reward in zip(gens, rollouts.rewards.flatten().tolist(), strict=True):
        assert gen.turn_rewards is not None
        assert reward == pytest.approx(2 * sum(gen.turn_rewards))
    by_tokens = {tuple(g.token_ids): g for g in gens}
    for seq, start, steps in zip(rows.sequences, rows.starts, rows.step_rewards, strict=True):
        gen = by_tokens[tuple(seq[start:])]
        assert gen.turn_ends and steps == {t: 2 * gen.turn_rewards[t] for t in gen.turn_ends}
        assert all(gen.turn_rewards[t] == 0 for t in range(len(gen.token_ids)) if t not in steps)
    metric = sum(sum(g.turn_rewards) for g in gens) / len(gens)
    assert result.history[0]["rollout/turn_reward"] == pytest.approx(metric)


def test_ppo_trains_the_same_packed_and_padded_with_turn_rewards(tmp_path: Path) -> None:
    path = turn_config(tmp_path, mini_batches=2)
    firsts = []
    for packing in (False, True):
        overrides = [
            "algorithm.name=ppo_gae",
            "train.max_steps=1",
            f"train.packing={str(packing).lower()}",
            f"output_dir={tmp_path / f'packing-{packing}'}",
        ]
        firsts.append(Trainer(load_config(path, overrides)).train().history[0])
    padded, packed = firsts
    assert padded["rollout/turn_reward"] == packed["rollout/turn_reward"] > 0
    for key in ("loss", "grad_norm", "critic/value_loss", "critic/returns"):
        assert packed[key] == pytest.approx(padded[key], rel=1e-4, abs=1e-7), key


def test_ppo_learns_from_turn_rewards_alone(tmp_path: Path) -> None:
    path = turn_config(tmp_path)
    overrides = ["algorithm.name=ppo_gae", "train.max_steps=12", "critic.optim.lr=1e-2"]
    result = Trainer(load_config(path, overrides)).train()
    earned = [h["rollout/turn_reward"] for h in result.history if "rollout/turn_reward" in h]
    first, last = sum(earned[:3]) / 3, sum(earned[-3:]) / 3
    assert last > 1.5 * first and last > first + 0.15, earned


def test_an_environment_that_gives_no_reward_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, {"name": "online_environments:Fixed"})
    assert main(["train", str(path), "train.max_steps=1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "no finite environment reward" in err[0], err
    assert "get_reward" in err[0] and "(observation, reward)" in err[0]
