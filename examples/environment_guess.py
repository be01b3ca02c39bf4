"""A multi-turn environment of your own: a number-guessing game.

The model guesses; the environment answers "higher" or "lower" until the guess is right or the
turns run out, and rewards the episode by how fast it found the number. The class is all a user
writes (TRL's environment_factory contract with a text step):

    reset(**row)            a fresh instance per episode, given the data row (here its `secret`)
    step(turn) -> str|None  the observation appended to the episode, or None to end it; or the
                            pair (observation, reward) to reward the turn (GuessWithTurnRewards)
    get_reward() -> float   optional: the episode's reward, read as {name: environment}

    python examples/environment_guess.py

In a config: online: {environment: {name: "environment_guess:GuessTheNumber", max_turns: 4},
rewards: [{name: environment}]} (with this folder on PYTHONPATH).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from alignlib.rollout import EpisodeRunner, EpisodeSettings, SamplingParams
from alignlib.testing import tiny_engine


class GuessTheNumber:
    """The row's `secret` is the number to find; each turn's last integer is the guess."""

    stop = ("\n",)  # one line per guess

    def reset(self, secret: int, **row: Any) -> None:
        self.secret, self.guesses, self.found = int(secret), 0, False

    def step(self, turn: str) -> str | None:
        numbers = re.findall(r"-?\d+", turn)
        self.guesses += 1
        if not numbers:
            return " Say a number.\n"
        guess = int(numbers[-1])
        if guess == self.secret:
            self.found = True
            return None  # solved: the episode ends
        return " higher\n" if guess < self.secret else " lower\n"

    def get_reward(self) -> float:
        return 1.0 / self.guesses if self.found else 0.0


class GuessWithTurnRewards(GuessTheNumber):
    """The same game, rewarding each turn too: 0.1 for a guess closer to the secret than the
    previous one, −0.1 for a turn without a number. The episode's `environment` reward is
    get_reward() plus these; PPO with a critic (`ppo_gae`) credits each to its own turn."""

    def reset(self, secret: int, **row: Any) -> None:
        super().reset(secret, **row)
        self.distance: int | None = None

    def step(self, turn: str) -> tuple[str | None, float]:
        observation = super().step(turn)
        numbers = re.findall(r"-?\d+", turn)
        if not numbers:
            return observation, -0.1
        distance, before = abs(int(numbers[-1]) - self.secret), self.distance
        self.distance = distance
        return observation, 0.1 if before is not None and distance < before else 0.0


ROWS = [{"prompt": "Guess my number between 1 and 9.", "secret": s} for s in (3, 7)]

if __name__ == "__main__":
    engine = tiny_engine(init_std=0.3)
    settings = EpisodeSettings(max_turns=4, max_turn_tokens=6)  # a random model rarely says "\n"
    runner = EpisodeRunner(GuessTheNumber, {}, engine.tokenizer, settings)
    sampling = SamplingParams(n=2, max_new_tokens=40, seed=0)
    episodes = runner.run(engine, [r["prompt"] for r in ROWS], ROWS, sampling)
    for gens in episodes:
        for episode in gens:
            inserted = (episode.loss_mask or []).count(0)
            print(f"{episode.turns} turns, {inserted} environment tokens: {episode.text!r}")
    from _tiny_run import train_with

    environment = {
        "name": f"{Path(__file__).stem}:GuessTheNumber",
        "max_turns": 4,
        "max_turn_tokens": 2,  # 8 tokens per episode here: room for two turns
    }
    metrics = train_with({"name": "environment"}, ROWS * 2, environment=environment)
    print("trained 2 steps:", {k: round(v, 3) for k, v in metrics.items() if "rollout/" in k})
    environment["name"] = f"{Path(__file__).stem}:GuessWithTurnRewards"
    metrics = train_with({"name": "environment"}, ROWS * 2, environment=environment)
    print("with turn rewards:", {k: round(v, 3) for k, v in metrics.items() if "turn" in k})
