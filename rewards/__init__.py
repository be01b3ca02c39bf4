"""Verifiable rewards: plain callables that import nothing of training or rollout.

A reward is ``fn(completion: str, **columns) -> float``; ``columns`` are the dataset row's other
fields (``answer`` for math). TRL's batched ``fn(completions, **columns) -> list[float | None]``
and verl's ``compute_score(data_source, solution_str, ground_truth, extra_info)`` work unchanged
(``score_batch``; see ``forms``), and async rewards run concurrently. Registered names:
``math``, ``format``, ``length_penalty``, ``soft_overlong`` (DAPO's soft overlong punishment).
Learned ones: ``RewardModelScorer`` (one score per completion) and
``ProcessRewardScorer`` (one per reasoning step, TRL's PRM layout). ``call_reward`` calls one
with a row and configured parameters and checks its result.
"""

from __future__ import annotations

from alignlib.rewards.basic import format_reward, length_penalty, soft_overlong_penalty
from alignlib.rewards.calling import RewardError, call_reward, check_params
from alignlib.rewards.forms import detect_form, missing_columns, reads_environments, score_batch
from alignlib.rewards.math_grader import (
    configure_pool,
    extract_boxed,
    grade,
    grade_many,
    math_reward,
    normalize_answer,
    shutdown_pool,
)
from alignlib.rewards.process_reward import (
    ProcessRewardScorer,
    Step,
    TaggedProcessRewardScorer,
    split_steps,
)
from alignlib.rewards.registry import (
    RewardFn,
    get_reward,
    list_rewards,
    named_rewards,
    register_reward,
    resolve_reward,
)
from alignlib.rewards.reward_model import RewardModelScorer

__all__ = [
    "ProcessRewardScorer",
    "RewardError",
    "RewardFn",
    "RewardModelScorer",
    "Step",
    "TaggedProcessRewardScorer",
    "call_reward",
    "check_params",
    "configure_pool",
    "detect_form",
    "extract_boxed",
    "format_reward",
    "get_reward",
    "grade",
    "grade_many",
    "length_penalty",
    "list_rewards",
    "math_reward",
    "missing_columns",
    "named_rewards",
    "normalize_answer",
    "reads_environments",
    "register_reward",
    "resolve_reward",
    "score_batch",
    "shutdown_pool",
    "soft_overlong_penalty",
    "split_steps",
]
