"""Presets own their data side: the trainer names no method, a user's preset with its own
router trains online untouched, the older YAML keys still pick HPT's and LUFFY's routers, and
LUFFY's released-run loss (no on-policy clip, Σ / L) is exactly its closed form."""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from batches import luffy_batch, rel_error
from test_online import groups, make_config, spy

from alignlib import algorithms
from alignlib.algorithms.hpt import HptGate
from alignlib.algorithms.luffy import LuffyDemonstrations
from alignlib.config import load_config
from alignlib.config.online import OnlineConfig
from alignlib.estimator import (
    NLL,
    GroupNormalized,
    Role,
    RowPlan,
    Rows,
    UnifiedEstimator,
    plan_rows,
)
from alignlib.trainer.loop import Trainer

TRAINER = Path(__file__).resolve().parents[1] / "alignlib" / "trainer"
pytestmark = pytest.mark.usefixtures("one_thread")


def preset_names_in(source: str) -> list[tuple[int, str]]:
    """(line, token) for every identifier or string literal equal to a preset name."""
    names = set(algorithms.available())
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and token.string in names:
            found.append((token.start[0], token.string))
        elif token.type == tokenize.STRING:
            value = ast.literal_eval(token.string) if not token.string.startswith("f") else None
            if isinstance(value, str) and value in names:
                found.append((token.start[0], repr(value)))
    return found


def test_the_trainer_names_no_preset() -> None:
    hits = {
        path.name: found
        for path in sorted(TRAINER.glob("*.py"))
        if (found := preset_names_in(path.read_text()))
    }
    assert hits == {}
    # The scan does see a name where one is written.
    assert preset_names_in('if name == "hpt":\n    luffy = 1\n') == [(1, "'hpt'"), (2, "luffy")]


# ------------------------------------------------------------------ a user's own hybrid method
@dataclass(frozen=True)
class BestWorstAndDemo:
    """Per prompt: its best and worst rollout (SAMPLE rows) and its demonstration (a DEMO row
    trained by NLL); logs the share of prompts whose best rollout is correct."""

    needs_demonstrations: bool = True
    scores_demonstrations: bool = False
    min_samples: int = 2

    def route(self, rewards: torch.Tensor, correct: torch.Tensor, demo: Any) -> RowPlan:
        best, worst = rewards.argmax(-1).tolist(), rewards.argmin(-1).tolist()
        samples = [
            [b, w if w != b else (b + 1) % rewards.shape[1], -1]
            for b, w in zip(best, worst, strict=True)
        ]
        plan = plan_rows(rewards, samples, keep=torch.ones(rewards.shape[0], dtype=torch.bool))
        plan.metrics["mine/best_correct"] = correct.any(-1).to(torch.float64)
        return plan


def best_worst(sft_coef: float = 0.5) -> UnifiedEstimator:
    rl = UnifiedEstimator(
        reference="old", advantage=GroupNormalized(std=False), rows=Rows.of(Role.SAMPLE)
    )
    nll = NLL(coef=sft_coef, rows=Rows.of(Role.DEMO), normalization="token_mean_batch")
    return UnifiedEstimator(terms=[*rl.terms, nll], router=BestWorstAndDemo())


def test_a_user_preset_with_its_own_router_trains_online(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(algorithms.PRESETS._items, "best_worst", best_worst)
    seen = spy(monkeypatch)
    config = make_config(
        tmp_path,
        algorithm={"name": "best_worst"},
        online={"rewards": [{"name": "online_rewards:has_digit"}]},
    )
    trainer = Trainer(load_config(config))
    result = trainer.train()
    for rollouts, rows in zip(seen["rollouts"], seen["rows"], strict=True):
        for p, members in groups(rows).items():
            roles = [rows.roles[i] for i in members]
            assert roles == [int(Role.SAMPLE)] * 2 + [int(Role.DEMO)]
            best = rollouts.rewards[p].max()
            assert rows.rewards[members[0]] == float(best)
            demo = trainer.tokenizer.encode(rollouts.rows[p]["solution"], add_special_tokens=False)
            assert rows.sequences[members[2]][rows.starts[members[2]] :][:-1] == demo
    assert len(result.history) == 2
    for record in result.history:
        assert 0 <= record["mine/best_correct"] <= 1
        assert record["nll/loss"] > 0 and record["skipped_steps"] == 0


# ------------------------------------------------------------------ older YAML keys, one place
def test_router_for_resolves_the_preset_and_the_older_keys() -> None:
    hpt, grpo = algorithms.get("hpt", gamma=1), algorithms.get("grpo")
    assert algorithms.router_for(hpt, OnlineConfig()) == HptGate(1)
    assert algorithms.router_for(hpt, OnlineConfig(hpt_gamma=2)) == HptGate(2)
    assert algorithms.router_for(hpt, OnlineConfig(routing="hpt")) == HptGate(1)
    assert algorithms.router_for(grpo, OnlineConfig(routing="luffy")) == LuffyDemonstrations()
    assert algorithms.router_for(hpt, OnlineConfig(routing="none")).needs_demonstrations is False
    assert algorithms.router_for(algorithms.get("luffy"), OnlineConfig()).min_samples == 2
    with pytest.raises(ValueError, match=r"online\.hpt_gamma: this run's routing"):
        algorithms.router_for(grpo, OnlineConfig(hpt_gamma=1))
    # Mixtures keep their one data side.
    assert (0.5 * hpt + grpo).router == HptGate(1)
    with pytest.raises(ValueError, match="a mixture has one data side"):
        _ = hpt + algorithms.get("luffy")


def test_hpt_gate_plan_matches_the_gate() -> None:
    correct = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    rewards = correct.double() * 2 + 0.5
    plan = HptGate(gamma=1).route(rewards, correct, None)
    assert plan.keep.tolist() == [True, True, False]
    assert plan.sample_index.tolist() == [-1, -1, 0, 1, 2]
    assert plan.rewards.tolist() == [0.0, 0.0, 2.5, 2.5, 0.5]  # rollouts keep their reward
    assert plan.metrics["hpt/sft_frac"].mean() == pytest.approx(2 / 3)


# ------------------------------------------------------------------ LUFFY's released-run loss
def test_luffy_released_run_settings_match_their_closed_form() -> None:
    batch = luffy_batch().replace(entropy=None)
    length = 12.0
    estimator = algorithms.get(
        "luffy",
        entropy_coef=0.0,
        remove_clip=True,
        remove_token_mean=True,
        max_response_length=length,
    )
    got = torch.autograd.grad(estimator(batch).loss, batch.logprobs)[0]
    # Independently: Â = R − group mean; −Â·ρ on on-policy tokens (no clip), −Â·p/(p+γ) on
    # demonstration tokens; Σ over every token / L (LUFFY's loss_remove_token_mean).
    lp, m = batch.logprobs, batch.mask
    rewards, group = batch.rewards, batch.group_ids
    means = torch.stack([rewards[group == g].mean() for g in group.tolist()])
    adv = (rewards - means).unsqueeze(-1)
    ratio = (lp - batch.old_logprobs).exp()
    p = lp.exp()
    demo = (batch.roles == int(Role.DEMO)).unsqueeze(-1)
    loss = (torch.where(demo, -adv * p / (p + 0.1), -adv * ratio) * m).sum() / length
    want = torch.autograd.grad(loss, lp)[0]
    assert rel_error(got, want) < 1e-10
    # The clip really is gone: the default form differs on this batch.
    clipped = algorithms.get("luffy", entropy_coef=0.0)
    assert not torch.allclose(torch.autograd.grad(clipped(batch).loss, lp)[0], got)


def test_a_router_refuses_too_few_rollouts_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from alignlib.cli import main

    config = make_config(tmp_path, algorithm={"name": "luffy"}, rollout={"n": 1})
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "alignlib: error: rollout.n: LuffyDemonstrations (the routing of algorithm luffy) needs "
        "at least 2 rollouts per prompt, got 1"
    ]
