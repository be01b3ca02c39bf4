"""A reset that returns a first observation (TRL's environment_factory form): it is appended to
the episode's prompt (the text, or the last chat message), the same opening for every sample is
sampled in one call, different openings each in their own call with their own seed, and the
trainer trains each sample on the prompt it was sampled from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import online_environments as envs
import pytest
from test_environment import TOKENIZER, ScriptedEngine
from test_online import make_config, spy

from alignlib.config import load_config
from alignlib.rollout.base import SamplingParams
from alignlib.rollout.environment import EpisodeRunner, EpisodeSettings
from alignlib.rollout.episode import with_observation
from alignlib.trainer.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
ROWS = [{"prompt": "What is 2 + 3?", "k": 1}, {"prompt": "Add 4 and 4.", "k": 2}]


def encode(row: dict[str, Any]) -> list[int]:
    return TOKENIZER.encode(row["prompt"])


def run(deal: bool) -> tuple[ScriptedEngine, list[Any]]:
    runner = EpisodeRunner(envs.Board, {"deal": deal}, TOKENIZER, EpisodeSettings(max_turns=2))
    engine = ScriptedEngine()
    ids = [encode(row) for row in ROWS]
    sampling = SamplingParams(n=3, max_new_tokens=64, seed=11)
    return engine, runner.run(engine, ids, ROWS, sampling, encode)


def test_the_same_opening_is_sampled_in_one_call() -> None:
    engine, out = run(deal=False)
    assert len(engine.calls) == 2  # turn 1 of all six episodes in one call, then turn 2
    assert engine.calls[0][1].n == 3
    for row, gens in zip(ROWS, out, strict=True):
        want = TOKENIZER.encode(row["prompt"] + f" board {row['k']}")
        assert all(g.prompt_ids == want for g in gens)


def test_each_opening_is_sampled_with_its_own_seed() -> None:
    engine, out = run(deal=True)
    first_calls = engine.calls[:3]  # one per sample index, then one call for turn 2
    assert [c[1].n for c in first_calls] == [1, 1, 1]
    assert len({c[1].seed for c in first_calls}) == 3
    openings = [TOKENIZER.decode(g.prompt_ids) for gens in out for g in gens]
    assert len(set(openings)) == 6 and all("board" in o for o in openings)
    for p, gens in enumerate(out):
        assert [(g.prompt_index, g.sample_index) for g in gens] == [(p, 0), (p, 1), (p, 2)]
        for g in gens:  # turn 2 continued each episode's own prompt
            assert any(prompt[: len(g.prompt_ids)] == g.prompt_ids for prompt in engine.calls[3][0])


def test_chat_prompts_get_it_in_their_last_message() -> None:
    chat = [{"role": "system", "content": "Play."}, {"role": "user", "content": "Start"}]
    assert with_observation(chat, " board") == [chat[0], {"role": "user", "content": "Start board"}]
    assert chat[1]["content"] == "Start"  # the row is left as it was
    assert with_observation("Start", " board") == "Start board"


def test_the_trainer_trains_each_sample_on_its_own_opening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy(monkeypatch)
    path = make_config(
        tmp_path,
        rollout={"n": 2, "max_new_tokens": 8},
        online={
            "prompts_per_step": 2,
            "environment": {"name": "online_environments:Board", "params": {"deal": True}},
        },
    )
    rows = [{**row, "answer": "5"} for row in ROWS]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    Trainer(load_config(path, ["train.max_steps=1", "data.shuffle=false"])).train()
    (rollouts,), (train_rows,) = seen["rollouts"], seen["rows"]
    sampled = [g.prompt_ids for gens in rollouts.generations for g in gens]
    assert len({tuple(p) for p in sampled}) == 4  # each sample dealt its own board
    prompts = [
        seq[:start] for seq, start in zip(train_rows.sequences, train_rows.starts, strict=True)
    ]
    assert sorted(map(tuple, prompts)) == sorted(map(tuple, sampled))
