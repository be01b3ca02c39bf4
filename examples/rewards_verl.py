"""A verl `compute_score` file, used unchanged: one call per completion, a float or a dict.

verl calls `compute_score(data_source, solution_str, ground_truth, extra_info)`; alignlib does
the same when the first parameter is `data_source` (or `solution_str`, as verl's per-dataset
scorers), or with `form: verl`. The ground truth is the row's `reward_model.ground_truth`
(verl's parquet layout), else `ground_truth`, else `answer`; a dict result gives its "score".

    python examples/rewards_verl.py

In a config: online: {rewards: [{name: "my_verl_reward:compute_score"}]}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from alignlib.rewards import score_batch


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None
) -> dict[str, Any]:
    """verl's GSM8K style: the last number of the response against the ground truth."""
    numbers = re.findall(r"-?\d+", solution_str)
    correct = bool(numbers) and numbers[-1] == str(ground_truth)
    return {"score": 1.0 if correct else 0.0, "acc": correct, "source": data_source}


ROWS = [
    {"prompt": "What is 2 + 3?", "data_source": "gsm8k", "reward_model": {"ground_truth": "5"}},
    {"prompt": "What is 4 + 4?", "data_source": "gsm8k", "reward_model": {"ground_truth": "8"}},
]

if __name__ == "__main__":
    texts = ["2 + 3 = 5", "4 + 4 = 9"]
    print("scores:", score_batch(compute_score, "compute_score", texts, ROWS, {}))
    from _tiny_run import train_with

    metrics = train_with({"name": f"{Path(__file__).stem}:compute_score"}, ROWS * 2)
    print("trained 2 steps:", {k: round(v, 3) for k, v in metrics.items() if "reward" in k})
