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
