"""alignlib's own form, sync and async: `fn(completion, **columns) -> float`.

An `async def` reward (an LLM judge behind an HTTP client) has all its calls of a batch awaited
together on one long-lived event loop, so eight 0.2 s judge calls take about 0.2 s, not 1.6 s.
The same holds for async TRL and verl rewards.

    python examples/rewards_async.py

In a config: online: {rewards: [{name: "my_judge:judge", weight: 0.5}, {name: math}]}
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from alignlib.rewards import score_batch


def contains_answer(completion: str, answer: str) -> float:
    """The plain form: the row's columns arrive by name."""
    return float(answer in completion)


async def judge(completion: str, answer: str) -> float:
    """Stands in for `await client.post(...)` to a judge model."""
    await asyncio.sleep(0.2)
    return 1.0 if answer in completion else 0.0


ROWS = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(2, 3), (4, 4)]]

if __name__ == "__main__":
    texts = ["2 + 3 = 5", "4 + 4 = 9"] * 4
    began = time.perf_counter()
    scores = score_batch(judge, "judge", texts, ROWS * 4, {})
    print(f"async judge: {scores} in {time.perf_counter() - began:.2f} s (8 calls of 0.2 s)")
    print("plain:", score_batch(contains_answer, "contains_answer", texts, ROWS * 4, {}))
    from _tiny_run import train_with

    metrics = train_with({"name": f"{Path(__file__).stem}:judge"}, ROWS * 2)
    print("trained 2 steps:", {k: round(v, 3) for k, v in metrics.items() if "reward" in k})
