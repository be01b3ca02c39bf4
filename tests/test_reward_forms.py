"""Reward functions written for TRL or verl work unchanged: the form is read from the signature
(or forced by `online.rewards[].form`), TRL's None is "no opinion", verl's dict gives its score,
and async rewards of a batch run concurrently."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import time
from pathlib import Path
from typing import Any

import pytest

from alignlib.config.online import RewardSpec
from alignlib.rewards import RewardError, detect_form, missing_columns, score_batch
from alignlib.trainer.online_rewards import RewardModel

ROWS = [
    {"prompt": "What is 2 + 3?", "solution": "5", "answer": "5"},
    {"prompt": "What is 4 + 4?", "solution": "8", "answer": "8"},
]
CHAT_ROWS = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in ROWS]
TEXTS = ["The answer is 5", "I do not know"]
SEEN: dict[str, Any] = {}


# TRL's documented shape: batched, columns as lists, None = no opinion.
def trl_accuracy(completions: list[Any], solution: list[str], **kwargs: Any) -> list[float | None]:
    SEEN["trl"] = {"completions": completions, "solution": solution, **kwargs}
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [None if s is None else float(s in t) for t, s in zip(texts, solution, strict=True)]


def trl_no_opinion(completions: list[str], **kwargs: Any) -> list[float | None]:
    return [None if "know" in c else 2.0 for c in completions]


def trl_overlong(completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
    """Like TRL's soft overlong punishment: its first parameter is completion_ids."""
    return [-float(len(ids)) for ids in completion_ids]


# verl's documented shape: one call per completion, dict results carry "score".
def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info=None):
    SEEN.setdefault("verl", []).append((data_source, ground_truth, extra_info))
    hit = ground_truth in solution_str
    return {"score": 1.0 if hit else -1.0, "acc": hit}


def verl_gsm8k(solution_str: str, ground_truth: str, format_score: float = 0.0) -> float:
    """verl's per-dataset scorers start with solution_str and return a float."""
    return 1.0 if ground_truth in solution_str else format_score


def plain(completion: str, answer: str) -> float:
    return float(answer in completion)


async def async_judge(completion: str, answer: str) -> float:
    await asyncio.sleep(0.2)
    return float(answer in completion)


async def trl_async_judge(completions: list[str], **kwargs: Any) -> list[float]:
    await asyncio.sleep(0.05)
    return [0.5 for _ in completions]


def test_the_form_is_read_from_the_signature() -> None:
    assert detect_form(trl_accuracy) == "trl"
    assert detect_form(trl_overlong) == "trl"
    assert detect_form(compute_score) == "verl"
    assert detect_form(verl_gsm8k) == "verl"
    assert detect_form(plain) == "alignlib"
    assert detect_form(async_judge) == "alignlib"


def test_trl_form_gets_lists_and_string_completions() -> None:
    assert score_batch(trl_accuracy, "acc", TEXTS, ROWS, {}) == [1.0, 0.0]
    assert SEEN["trl"]["completions"] == TEXTS
    assert SEEN["trl"]["solution"] == ["5", "8"]
    assert SEEN["trl"]["prompts"] == ["What is 2 + 3?", "What is 4 + 4?"]
    assert SEEN["trl"]["answer"] == ["5", "8"]


def test_trl_form_gets_message_lists_for_conversational_prompts() -> None:
    assert score_batch(trl_accuracy, "acc", TEXTS, CHAT_ROWS, {}) == [1.0, 0.0]
    assert SEEN["trl"]["completions"] == [[{"role": "assistant", "content": t}] for t in TEXTS]
    assert SEEN["trl"]["prompts"][0] == [{"role": "user", "content": "What is 2 + 3?"}]


def test_trl_completion_ids_are_the_sampled_tokens() -> None:
    values = score_batch(trl_overlong, "len", TEXTS, ROWS, {}, token_ids=[[1, 2, 3], [4]])
    assert values == [-3.0, -1.0]


def test_trl_none_is_left_out_of_the_weighted_sum() -> None:
    """TRL's nansum: a None term adds nothing; the other rewards still count."""
    specs = [
        RewardSpec(name="test_reward_forms:trl_no_opinion", weight=1.0),
        RewardSpec(name="test_reward_forms:plain", weight=0.5),
    ]
    total = RewardModel(specs, threshold=0.5).score(TEXTS, [3, 4], ROWS).total
    assert total.tolist() == [2.0 + 0.5, 0.0 + 0.0]
    assert not any(math.isnan(v) for v in total.tolist())


def test_trl_wrong_length_is_one_line() -> None:
    with pytest.raises(RewardError, match=r"returned 1 values for 2 completions"):
        score_batch(lambda completions, **_: [1.0], "short", TEXTS, ROWS, {})


def test_verl_form_ground_truth_and_dict_score() -> None:
    SEEN.pop("verl", None)
    rows = [
        {"prompt": "p", "data_source": "gsm8k", "reward_model": {"ground_truth": "5"}},
        {"prompt": "q", "answer": "8", "extra_info": {"index": 1}},
    ]
    assert score_batch(compute_score, "verl", TEXTS, rows, {}) == [1.0, -1.0]
    assert SEEN["verl"] == [("gsm8k", "5", {}), ("", "8", {"index": 1})]
    assert score_batch(verl_gsm8k, "g", TEXTS, ROWS, {"format_score": 0.1}) == [1.0, 0.1]


def test_verl_dict_without_score_is_one_line() -> None:
    with pytest.raises(RewardError, match="without 'score'"):
        score_batch(lambda data_source, solution_str, **_: {"acc": 1}, "v", TEXTS, ROWS, {})


def test_async_rewards_of_a_batch_run_concurrently() -> None:
    rows = ROWS * 4
    began = time.perf_counter()
    values = score_batch(async_judge, "judge", TEXTS * 4, rows, {})
    assert time.perf_counter() - began < 0.2 * len(rows) / 2  # 8 x 0.2 s sequentially
    assert values == [1.0, 0.0] * 4
    assert score_batch(trl_async_judge, "j", TEXTS, ROWS, {}) == [0.5, 0.5]


def test_async_failure_names_the_row() -> None:
    async def broken(completion: str, **_: Any) -> float:
        raise ConnectionError("judge unreachable")

    with pytest.raises(RewardError, match=r"raised ConnectionError: judge unreachable.*2 \+ 3"):
        score_batch(broken, "judge", TEXTS, ROWS, {})


def test_a_forced_form_overrides_detection() -> None:
    def opaque(*args: Any, **kwargs: Any) -> Any:  # a wrapper that hides its signature
        if "completions" in kwargs:
            return [float(len(c)) for c in kwargs["completions"]]
        return float(len(args[0]))

    assert detect_form(opaque) == "alignlib"
    assert score_batch(opaque, "o", TEXTS, ROWS, {}) == [15.0, 13.0]
    assert score_batch(opaque, "o", TEXTS, ROWS, {}, form="trl") == [15.0, 13.0]
    with pytest.raises(RewardError, match="use auto, alignlib, trl or verl"):
        score_batch(opaque, "o", TEXTS, ROWS, {}, form="openrlhf")


def test_reward_model_takes_every_form_from_config() -> None:
    specs = [
        RewardSpec(name="test_reward_forms:trl_accuracy"),
        RewardSpec(name="test_reward_forms:compute_score", weight=2.0),
        RewardSpec(name="test_reward_forms:async_judge", form="alignlib"),
    ]
    model = RewardModel(specs, threshold=0.5)
    model.check_rows(ROWS, "data")  # TRL/verl inputs are supplied, `solution` is a column
    total = model.score(TEXTS, [3, 4], ROWS).total
    assert total.tolist() == [1.0 + 2.0 + 1.0, 0.0 - 2.0 + 0.0]


def test_supplied_parameters_are_not_required_columns() -> None:
    assert missing_columns(trl_accuracy, {}, {"prompt": "p"}) == ["solution"]
    assert missing_columns(compute_score, {}, {"prompt": "p"}) == []
    assert missing_columns(trl_overlong, {}, {"prompt": "p"}) == []


@pytest.mark.parametrize(
    ("example", "function", "expected"),
    [
        ("rewards_trl", "accuracy_reward", [1.0, 0.0]),  # the second row has no solution: None
        ("rewards_verl", "compute_score", [1.0, 0.0]),
        ("rewards_async", "judge", [1.0, 0.0]),
    ],
)
def test_the_examples_score_their_rows(example: str, function: str, expected: list) -> None:
    path = Path(__file__).parents[1] / "examples" / f"{example}.py"
    spec = importlib.util.spec_from_file_location(f"example_{example}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    texts = ["2 + 3 = 5", "4 + 4 = 9"]
    assert score_batch(getattr(module, function), function, texts, module.ROWS, {}) == expected
