"""Environments the multi-turn tests name as `online_environments:Class` (importable because
tests/ is on sys.path, as a user's own module would be on PYTHONPATH)."""

from __future__ import annotations

import asyncio
from typing import Any


class Fixed:
    """Answers every turn with the same observation; records what it saw."""

    def __init__(self, observation: str = " result: 7 ") -> None:
        self.observation = observation
        self.row: dict[str, Any] = {}
        self.turns: list[str] = []

    def reset(self, **row: Any) -> None:
        self.row = row

    def step(self, turn: str) -> str | None:
        self.turns.append(turn)
        return self.observation


class ScoreLastTurn:
    """One observation after the first turn, then the episode ends; the reward is the share of
    digits in the model's second turn, so only the turn generated after the environment's
    tokens carries a signal."""

    def __init__(self) -> None:
        self.turns: list[str] = []

    def reset(self, **row: Any) -> None:
        self.turns = []

    def step(self, turn: str) -> str | None:
        self.turns.append(turn)
        return " 7 " if len(self.turns) == 1 else None

    def get_reward(self) -> float:
        last = self.turns[-1].strip() if len(self.turns) > 1 else ""
        return sum(c.isdigit() for c in last) / max(1, len(last))


class Rewarding(Fixed):
    """Fixed, with a reward of its own."""

    def get_reward(self) -> float:
        return float(len(self.turns))


class AwaitsAll:
    """An async step that finishes only once every episode's step has started: sequential
    awaiting would time out, concurrent awaiting passes."""

    started = 0
    expected = 0

    def reset(self, **row: Any) -> None:
        pass

    async def step(self, turn: str) -> str | None:
        type(self).started += 1
        async with asyncio.timeout(5):
            while type(self).started < type(self).expected:
                await asyncio.sleep(0.01)
        return None


class Raises(Fixed):
    def step(self, turn: str) -> str | None:
        raise RuntimeError("sandbox unreachable")


class ReturnsNumber(Fixed):
    def step(self, turn: str) -> Any:
        return 3


class ResetSpeaks(Fixed):
    def reset(self, **row: Any) -> Any:
        return "first observation"


class ResetReturnsNumber(Fixed):
    def reset(self, **row: Any) -> Any:
        return 3


class Board(Fixed):
    """TRL's form of a game: reset returns the board (from the row: every sample alike, or,
    with ``deal``, a different one per instance), which the episode's prompt ends with."""

    dealt = 0

    def __init__(self, deal: bool = False) -> None:
        super().__init__(" ok ")
        self.deal = deal

    def reset(self, **row: Any) -> str:
        super().reset(**row)
        type(self).dealt += 1
        return f" board {row['k']}" + (f" deal {type(self).dealt}" if self.deal else "")


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a + b


async def lookup(key: str) -> str:
    """Look a key up in a slow store.

    Args:
        key: What to look up.
    """
    await asyncio.sleep(0.01)
    return f"value of {key}"


class TrlAdder:
    """A TRL `environment_factory` class, as TRL's docs write them: no step, its public methods
    are the tools; `get_reward` is async (an LLM judge would be)."""

    built = 0

    def __init__(self, target_field: str = "answer") -> None:
        type(self).built += 1
        self.target_field = target_field
        self.sums: list[int] = []
        self.target = 0

    def reset(self, **kwargs: Any) -> None:
        self.sums = []
        self.target = int(kwargs[self.target_field])

    def add(self, a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: The first integer.
            b: The second integer.
        """
        self.sums.append(a + b)
        return a + b

    async def get_reward(self) -> float:
        return float(self.target in self.sums)

    @property
    def last(self) -> int:
        raise AssertionError("a property is not a tool and is never evaluated")

    def _private(self) -> None:
        raise AssertionError("a private method is not a tool")


class TrlAdderUnrewarded:
    """TRL form without get_reward."""

    def reset(self, **kwargs: Any) -> None:
        pass

    def add(self, a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: The first integer.
            b: The second integer.
        """
        return a + b


class NoTools:
    """Neither step nor a public method: not an environment."""

    def reset(self, **kwargs: Any) -> None:
        pass


def sums_seen(environments: list[TrlAdder], **kwargs: Any) -> list[float]:
    """A TRL reward that reads the episodes' environments (TRL's `environments` keyword)."""
    return [float(len(environment.sums)) for environment in environments]


class Recording(Fixed):
    """Fixed, recording every instance (the rows its reset saw)."""

    instances: list[Recording] = []  # noqa: RUF012 (a test's shared record)

    def __init__(self, observation: str = " result: 7 ") -> None:
        super().__init__(observation)
        type(self).instances.append(self)


class TurnRewards(Fixed):
    """Turn k earns k/2 (a pair (observation, reward) from step); the third turn ends it."""

    def step(self, turn: str) -> Any:
        self.turns.append(turn)
        k = len(self.turns)
        return (self.observation if k < 3 else None, k / 2)


class TurnRewardsAndOwn(TurnRewards):
    """TurnRewards with a get_reward of its own, added to the turn rewards."""

    def get_reward(self) -> float:
        return 10.0


class BadTurnReward(Fixed):
    def step(self, turn: str) -> Any:
        return (self.observation, "high")


def digit_share(text: str) -> float:
    text = text.strip()
    return sum(c.isdigit() for c in text) / max(1, len(text))


class DigitTurns:
    """Two turns, no get_reward: each turn earns the share of digits in it as its turn reward,
    so only turn rewards teach."""

    def reset(self, **row: Any) -> None:
        self.turns = 0

    def step(self, turn: str) -> Any:
        self.turns += 1
        return (" 7 " if self.turns == 1 else None, digit_share(turn))
