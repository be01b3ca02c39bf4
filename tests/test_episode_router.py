"""Several environments in one run (`online.environments`): each row plays the environment its
column names, with that environment's own settings, tools and reward; the column is not passed
to reset; an unrewarded environment's episodes score 0 beside a rewarded one; rows that name no
configured environment, or both kinds of section, are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import online_environments as envs
import pytest
from test_environment import TOKENIZER, ScriptedEngine
from test_online import make_config, spy

from alignlib.cli import main
from alignlib.config import load_config
from alignlib.rollout.base import SamplingParams
from alignlib.rollout.environment import EpisodeRunner, EpisodeSettings
from alignlib.rollout.environments import EpisodeError
from alignlib.rollout.episode_router import EpisodeRouter
from alignlib.trainer.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def router() -> EpisodeRouter:
    def runner(factory: Any, params: dict[str, Any], turns: int) -> EpisodeRunner:
        return EpisodeRunner(factory, params, TOKENIZER, EpisodeSettings(max_turns=turns))

    return EpisodeRouter(
        {
            "a": runner(envs.Recording, {"observation": " alpha "}, 2),
            "b": runner(envs.Rewarding, {"observation": " beta "}, 3),
        },
        field="game",
    )


def test_each_row_plays_the_environment_it_names() -> None:
    rows = [
        {"prompt": "one", "game": "a", "k": 0},
        {"prompt": "two", "game": "b", "k": 1},
        {"prompt": "three", "game": "a", "k": 2},
    ]
    ids = [TOKENIZER.encode(r["prompt"]) for r in rows]
    envs.Recording.instances.clear()
    engine = ScriptedEngine()
    out = router().run(engine, ids, rows, SamplingParams(n=2, max_new_tokens=64, seed=3))
    for index, (row, gens) in enumerate(zip(rows, out, strict=True)):
        observation = " alpha " if row["game"] == "a" else " beta "
        for sample, gen in enumerate(gens):
            assert (gen.prompt_index, gen.sample_index, gen.prompt_ids) == (
                index,
                sample,
                ids[index],
            )
            shown = [t for t, m in zip(gen.token_ids, gen.loss_mask or [], strict=True) if not m]
            assert TOKENIZER.decode(shown) == observation * (gen.turns - 1)
            assert gen.turns == (2 if row["game"] == "a" else 3)  # each its own max_turns
            # b rewards (get_reward: its turns); a has no get_reward: 0 beside b
            assert gen.environment_reward == (3.0 if row["game"] == "b" else 0.0)
    # reset got the row without the control column; a's two rows, two samples each
    assert sorted(e.row["k"] for e in envs.Recording.instances) == [0, 0, 2, 2]
    assert all("game" not in e.row for e in envs.Recording.instances)
    with pytest.raises(EpisodeError, match=r"prompt 0: column 'game' is 'c', not one of"):
        router().run(engine, ids[:1], [{"prompt": "x", "game": "c"}], SamplingParams())


def write_config(tmp: Path, rows: list[dict[str, Any]], **online: Any) -> Path:
    path = make_config(
        tmp,
        rollout={"n": 4, "max_new_tokens": 32},
        online={
            "prompts_per_step": 4,
            "rewards": [{"name": "environment"}],
            "environments": {
                "score": {"name": "online_environments:ScoreLastTurn", "max_turn_tokens": 4},
                "plain": {
                    "name": "online_environments:Fixed",
                    "max_turns": 3,
                    "max_turn_tokens": 3,
                },
            },
            **online,
        },
    )
    (tmp / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    {"prompt": f"What is {a} + {a}?", "answer": str(2 * a), "environment": game}
    for a, game in [(1, "score"), (2, "plain"), (3, "score"), (4, "plain")]
]


def test_a_run_trains_on_several_environments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy(monkeypatch)
    path = write_config(tmp_path, ROWS)
    history = Trainer(load_config(path, ["data.shuffle=false"])).train().history
    for step in history:  # each environment's own statistics
        assert step["rollout/plain/reward_mean"] == 0.0 and step["rollout/plain/turns"] == 3
        assert step["rollout/score/turns"] == 2
        both = (step["rollout/plain/reward_mean"] + step["rollout/score/reward_mean"]) / 2
        assert both == pytest.approx(step["rollout/reward_mean"])  # two prompts each
    for rollouts in seen["rollouts"]:
        for row, gens, rewards in zip(
            rollouts.rows, rollouts.generations, rollouts.rewards, strict=True
        ):
            turns = {g.turns for g in gens}
            if row["environment"] == "plain":
                assert turns == {3} and rewards.tolist() == [0.0] * 4
            else:
                assert turns == {2}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rows": [{**ROWS[0], "environment": "scores"}]}, "(did you mean 'score'?)"),
        ({"online": {"environment": {"name": "calculator"}}}, "are both set"),
        (
            {"online": {"environment_field": "game"}},
            "row 1: column 'game' is None, not one of the environments",
        ),
        (
            {"online": {"heldout": {"data": "HELDOUT"}}},
            "heldout.jsonl row 1: column 'environment' is None",
        ),
    ],
)
def test_misconfigured_environments_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], message: str
) -> None:
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(json.dumps({"prompt": "What is 1 + 1?", "answer": "2"}) + "\n")
    online = change.get("online", {})
    if "heldout" in online:
        online = {**online, "heldout": {"data": str(heldout)}}
    path = write_config(tmp_path, change.get("rows", ROWS), **online)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
