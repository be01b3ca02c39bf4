"""A TRL reward function, used unchanged: batched, columns as lists, None = no opinion.

TRL's GRPOTrainer calls `fn(prompts=..., completions=..., completion_ids=..., **columns)` once
per batch; alignlib does the same when the first parameter is `completions` (or with
`form: trl`). Conversational prompts give completions as [{"role": "assistant", ...}] lists.

    python examples/rewards_trl.py

In a config: online: {rewards: [{name: "my_rewards:accuracy_reward"}]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignlib.rewards import score_batch


def accuracy_reward(completions: list[Any], solution: list[str], **kwargs: Any) -> list:
    """1.0 when the gold solution appears in the completion; None (no opinion) without one."""
    rewards: list[float | None] = []
    for completion, gold in zip(completions, solution, strict=True):
        text = completion[0]["content"] if isinstance(completion, list) else completion
        rewards.append(None if not gold else float(gold in text))
    return rewards


ROWS = [
    {"prompt": [{"role": "user", "content": "What is 2 + 3?"}], "solution": "5"},
    {"prompt": [{"role": "user", "content": "What is 4 + 4?"}], "solution": ""},
]

if __name__ == "__main__":
    texts = ["2 + 3 = 5", "no idea"]
    print("scores:", score_batch(accuracy_reward, "accuracy_reward", texts, ROWS, {}))
    from _tiny_run import train_with

    metrics = train_with({"name": f"{Path(__file__).stem}:accuracy_reward"}, ROWS * 2)
    print("trained 2 steps:", {k: round(v, 3) for k, v in metrics.items() if "reward" in k})
