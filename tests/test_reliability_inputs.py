"""Bad inputs through `alignlib train` as a user runs it: wrong objectives, bad data, bad reward
parameters and results, an unreachable Ray cluster.

Every case asserts exit code 2, exactly one `alignlib: error:` line naming the key / file / row,
no traceback, and that an earlier run in the output folder is intact. Cases refused before the
model loads also assert that it never loaded and that nothing was written.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import alignlib.trainer.loop as loop
from alignlib import algorithms
from alignlib.cli import main
from alignlib.config.online import RewardSpec
from alignlib.estimator import DPOWeights
from alignlib.estimator.registry import ParameterError, ParameterTypeError
from alignlib.rewards import RewardError, call_reward
from alignlib.trainer.online_rewards import RewardModel

PAIRS = [
    {"prompt": f"What is {a} + {b}?", "chosen": f"{a + b}", "rejected": f"{a + b + 1}"}
    for a, b in [(2, 3), (4, 4), (7, 1), (6, 3)]
]
PROMPTS = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(2, 3), (4, 4)]]
EARLIER = '{"step": 1, "loss": 0.5}\n'


# Rewards the cases name as `test_reliability_inputs:NAME` (imported by module:function).
def none_reward(completion: str, **_: object) -> None:
    return None


def nan_reward(completion: str, **_: object) -> float:
    return math.nan


def text_reward(completion: str, **_: object) -> str:
    return "1.0"


def raising_reward(completion: str, **_: object) -> float:
    return 1 / 0


RAISES_AT = raising_reward.__code__.co_firstlineno + 1
"""The line the one-line error names: where the user's reward raised."""


pytestmark = pytest.mark.usefixtures("one_thread")


def jsonl(path: Path, rows: list[Any]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def offline(tmp: Path, rows: list[Any] | None = None, **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "model": {"name_or_path": "tiny:llama"},
        "data": {"path": jsonl(tmp / "data.jsonl", PAIRS if rows is None else rows)},
        "algorithm": {"name": "dpo"},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
        "train": {"batch_size": 2, "micro_batch_size": 2, "max_steps": 1},
        "logging": {"progress": False, "tensorboard": False, "plot": False},
    }
    return merge(cfg, sections)


def online(tmp: Path, rows: list[Any] | None = None, **sections: Any) -> dict[str, Any]:
    cfg = offline(tmp, PROMPTS if rows is None else rows, algorithm={"name": "grpo"})
    cfg["rollout"] = {"n": 2, "max_new_tokens": 4}
    cfg["online"] = {"prompts_per_step": 2, "micro_batch_size": 4}
    return merge(cfg, sections)


def merge(cfg: dict[str, Any], sections: dict[str, Any]) -> dict[str, Any]:
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# fmt: off
Case = Callable[[Path], dict[str, Any]]


def off(rows: list[Any] | None = None, **sections: Any) -> Case:
    return lambda tmp: offline(tmp, rows, **sections)


def on(rows: list[Any] | None = None, **sections: Any) -> Case:
    return lambda tmp: online(tmp, rows, **sections)


def algo(name: str | None, **params: Any) -> dict[str, Any]:
    return {"algorithm": {"name": name, "params": params}}


def rewards(*specs: dict[str, Any]) -> dict[str, Any]:
    return {"online": {"rewards": list(specs)}}


SAME = [{**p, "rejected": p["chosen"]} for p in PAIRS]
TRACE = [{**p, "trace": "false"} for p in PAIRS]
DPO_COMPONENTS = {
    "algorithm": {
        "name": None,
        "components": {
            "advantage": {"name": "dpo", "params": {"beta": -1}},
            "likelihood": "sequence-sum",
            "aggregation": "pair-mean",
        },
    }
}
PENALTY_TYPO = {"name": "length_penalty", "params": {"target_lenght": 20}}
NAN = "test_reliability_inputs:nan_reward"
# (config builder, text the one error line must contain)
BEFORE_MODEL = [
    pytest.param(off(train={"reference": "none"}), "train.reference: none leaves algorithm dpo without reference log-probs", id="reference-none-dpo"),  # noqa: E501
    pytest.param(off(train={"reference": "adapter"}), "train.reference: adapter needs lora.enabled: true", id="reference-adapter-no-lora"),  # noqa: E501
    pytest.param(off(**algo("dpo", beta=0)), "algorithm.params.beta: must be > 0, got 0", id="beta-zero"),  # noqa: E501
    pytest.param(off(**algo("dpo", beta=-0.5)), "algorithm.params.beta: must be > 0, got -0.5", id="beta-negative"),  # noqa: E501
    pytest.param(off(**algo("dpo", beta="high")), "algorithm.params.beta: must be a number, got str 'high'", id="beta-text"),  # noqa: E501
    pytest.param(off(**algo("ipo", beta=0.0)), "algorithm.params.beta: must be > 0", id="ipo-beta-zero"),  # noqa: E501
    pytest.param(off(**algo("bvpo", alpha=1.5)), "algorithm.params.alpha: must be <= 1, got 1.5", id="bvpo-alpha"),  # noqa: E501
    pytest.param(off(**algo("rpo", eta=-1)), "algorithm.params.eta: must be >= 0", id="rpo-eta-negative"),  # noqa: E501
    pytest.param(off(**DPO_COMPONENTS), "algorithm.components: DPOWeights: beta must be > 0", id="component-beta"),  # noqa: E501
    pytest.param(off(**algo("grpo")), "algorithm grpo is an online RL method", id="grpo-offline"),
    pytest.param(off(**algo("inpo")), "needs the previous iterate's log-probs", id="inpo-no-iterations"),  # noqa: E501
    pytest.param(off([]), "data.jsonl is empty (no rows)", id="empty-file"),
    pytest.param(lambda t: offline(t, data={"path": str(blank(t))}), "blank.jsonl is empty (no rows)", id="blank-file"),  # noqa: E501
    pytest.param(off([PAIRS[0], {**PAIRS[1], "prompt": 5}]), "data.jsonl row 2: field 'prompt' must be a string (or a list of chat messages), got int 5", id="prompt-number"),  # noqa: E501
    pytest.param(off([{**PAIRS[0], "chosen": {"x": 1}}]), "data.jsonl row 1: field 'chosen' must be a string", id="chosen-dict"),  # noqa: E501
    pytest.param(off(TRACE, **algo("bvpo")), "data.jsonl row 1: field 'trace' must be true or false", id="trace-string"),  # noqa: E501
    pytest.param(off(**algo("bvpo")), "splits pairs by their boolean 'trace' field", id="bvpo-without-trace"),  # noqa: E501
    pytest.param(off(SAME), "every pair has chosen == rejected (all 4 rows)", id="all-pairs-identical"),  # noqa: E501
    pytest.param(off(PROMPTS), "format 'prompts' has prompts but no completions", id="prompts-offline"),  # noqa: E501
    pytest.param(on([PROMPTS[0], {"prompt": "Hi"}], **rewards({"name": "math"})), "data.jsonl row 2: reward 'math' needs field 'answer'", id="online-no-answer"),  # noqa: E501
    pytest.param(on([{"prompt": [1, 2], "answer": "3"}]), "row 1: field 'prompt' must be a string", id="online-prompt-ints"),  # noqa: E501
    pytest.param(on(**rewards({"name": "math", "params": {"length_penalty": 1}})), "online.rewards[0].params.length_penalty: not a parameter of reward 'math'; valid: timeout_s", id="math-unknown-param"),  # noqa: E501
    pytest.param(on(**rewards({"name": "math"}, PENALTY_TYPO)), "online.rewards[1].params.target_lenght: not a parameter of reward 'length_penalty' (did you mean 'target_length'?)", id="length-penalty-typo"),  # noqa: E501
    pytest.param(on(**rewards({"name": NAN, "params": {"scale": 2}})), f"params.scale: not a parameter of reward '{NAN}'; valid: (none)", id="param-swallowed-by-catch-all"),  # noqa: E501
    pytest.param(on(**rewards({"name": "mth"})), "online.rewards[0].name: unknown reward 'mth' (did you mean 'math'?)", id="reward-name-typo"),  # noqa: E501
    pytest.param(on(**algo("hpt")), "data.jsonl row 1: online.routing needs a demonstration", id="hpt-no-demonstration"),  # noqa: E501
    pytest.param(on(**algo("dpo")), "algorithm dpo is not an online RL method", id="offline-method-online"),  # noqa: E501
    pytest.param(lambda t: online(t, online={"heldout": {"data": jsonl(t / "held.jsonl", [{"prompt": "Hi"}])}}), "held.jsonl row 1: held-out rows need an 'answer'", id="heldout-no-answer"),  # noqa: E501
    pytest.param(off(PROMPTS, **algo("inpo"), iterative={"oracle": "math_formt"}), "iterative.oracle: unknown reward 'math_formt'", id="inpo-oracle-typo"),  # noqa: E501
    pytest.param(lambda t: online(t, rollout={"num_workers": 1, "ray_address": f"127.0.0.1:{unused_port()}", "timeout_s": 5}), "no Ray cluster answered (connection refused); start one with `ray start --head`", id="ray-address-dead"),  # noqa: E501
]
REWARD = "reward 'test_reliability_inputs:{}' {} for a completion of the data row with prompt 'What"
AFTER_MODEL = [
    pytest.param(on(**rewards({"name": "test_reliability_inputs:none_reward"})), REWARD.format("none_reward", "returned NoneType None"), id="reward-none"),  # noqa: E501
    pytest.param(on(**rewards({"name": NAN})), REWARD.format("nan_reward", "returned nan"), id="reward-nan"),  # noqa: E501
    pytest.param(on(**rewards({"name": "test_reliability_inputs:text_reward"})), REWARD.format("text_reward", "returned str '1.0'"), id="reward-text"),  # noqa: E501
    pytest.param(on(**rewards({"name": "test_reliability_inputs:raising_reward"})), REWARD.format("raising_reward", f"raised ZeroDivisionError: division by zero (at {__file__} line {RAISES_AT}, in raising_reward)"), id="reward-raises"),  # noqa: E501
    pytest.param(on(**rewards({"name": NAN}), train={"nonfinite": "skip", "max_steps": 2}), "all 2 optimizer steps were skipped (non-finite or too-large gradients), so the model is untrained and final/ was not written", id="reward-nan-skip-every-step"),  # noqa: E501
]
# fmt: on


def blank(tmp: Path) -> Path:
    path = tmp / "blank.jsonl"
    path.write_text("\n  \n")
    return path


def earlier_run(tmp: Path) -> Path:
    """An output folder holding an earlier run's metrics and a note of the user's."""
    out = tmp / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text(EARLIER)
    (out / "notes.txt").write_text("mine")
    return out


def run_cli(tmp: Path, cfg: dict[str, Any], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    cfg["output_dir"] = str(tmp / "run")
    path = tmp / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["train", str(path)])
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, expected: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith("alignlib: error:")]
    assert code == 2, err
    assert len(errors) == 1, err
    assert expected in errors[0], errors[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(("case", "expected"), BEFORE_MODEL)
def test_refused_before_the_model_loads(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    case: Case,
    expected: str,
) -> None:
    def no_model(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model loaded before the input was refused")

    monkeypatch.setattr(loop, "load_policy", no_model)
    out = earlier_run(tmp_path)
    code, err = run_cli(tmp_path, case(tmp_path), capsys)
    assert_one_line(code, err, expected)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "notes.txt"]
    assert (out / "metrics.jsonl").read_text() == EARLIER


@pytest.mark.parametrize(("case", "expected"), AFTER_MODEL)
def test_bad_reward_result_is_one_line_naming_reward_and_row(
    tmp_path: Path, capsys: pytest.CaptureFixture, case: Case, expected: str
) -> None:
    earlier_run(tmp_path)
    code, err = run_cli(tmp_path, case(tmp_path), capsys)
    assert_one_line(code, err, expected)
    # The earlier run is intact: in place or moved aside to a sibling folder; the user's own
    # file stays where it was.
    kept = [p for p in tmp_path.glob("run*/metrics.jsonl") if p.read_text() == EARLIER]
    assert len(kept) == 1 and (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "run" / "final").exists()  # no "trained" model from a failed run


def test_some_identical_pairs_warn_once_and_are_logged(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = [PAIRS[0], {**PAIRS[1], "rejected": PAIRS[1]["chosen"]}, *PAIRS[2:]]
    code, err = run_cli(tmp_path, offline(tmp_path, rows), capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("alignlib: warning:")]
    assert len(warnings) == 1 and "1 of 4 pairs have chosen == rejected (rows 2)" in warnings[0]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [m["data/identical_pairs"] for m in logged] == [1.0]


FIRST_CALLS = {"count": 0}


def nan_at_first(completion: str, **_: object) -> float:
    """NaN for the first step's completions (2 prompts x 2), then a digit count."""
    FIRST_CALLS["count"] += 1
    return math.nan if FIRST_CALLS["count"] <= 4 else float(sum(c.isdigit() for c in completion))


def test_nonfinite_skip_skips_the_poisoned_step_and_counts_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    FIRST_CALLS["count"] = 0
    name = "test_reliability_inputs:nan_at_first"
    cfg = online(tmp_path, **rewards({"name": name}), train={"nonfinite": "skip", "max_steps": 3})
    code, err = run_cli(tmp_path, cfg, capsys)
    assert code == 0, err
    assert "alignlib: warning: step 1: non-finite gradient norm (nan); step skipped" in err
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [m["skipped_steps"] for m in logged] == [1.0, 0.0, 0.0]
    assert math.isnan(logged[0]["grad_norm"]) and math.isfinite(logged[1]["grad_norm"])
    assert (tmp_path / "run" / "final").is_dir()


def test_reward_parameters_reach_the_function() -> None:
    texts, tokens = ["x" * 40, "x" * 40], [40, 40]
    rows = [{"prompt": "p", "answer": "1", "solution": "s"}] * 2  # columns it does not name

    def penalty(target: int) -> list[float]:
        spec = RewardSpec(name="length_penalty", params={"target_length": target})
        return RewardModel([spec], 0.5).score(texts, tokens, rows).total.tolist()

    assert penalty(10) == [-1.0, -1.0] and penalty(40) == [0.0, 0.0]


def test_math_parameters_reach_the_grader(monkeypatch: pytest.MonkeyPatch) -> None:
    import alignlib.trainer.online_rewards as stage

    seen: list[float] = []

    def grade_many(texts: list[str], answers: list[str], timeout_s: float = 5.0) -> list[bool]:
        seen.append(timeout_s)
        return [True] * len(texts)

    monkeypatch.setattr(stage, "grade_many", grade_many)
    spec = RewardSpec(name="math", params={"timeout_s": 0.25})
    RewardModel([spec], 0.5).score(["\\boxed{1}"], [3], [{"prompt": "p", "answer": "1"}])
    assert seen == [0.25]


def test_presets_and_components_refuse_out_of_range_values() -> None:
    with pytest.raises(ParameterError, match=r"beta must be > 0, got 0 \("):
        DPOWeights(beta=0)
    with pytest.raises(ParameterError, match=r"beta must be > 0, got -0\.5"):
        algorithms.get("dpo", beta=-0.5)
    with pytest.raises(ParameterTypeError, match="beta must be a number, got str 'high'"):
        algorithms.get("hinge", beta="high")
    assert algorithms.get("dpo", beta=0.05) is not None


def test_call_reward_names_the_row() -> None:
    row = {"prompt": "A very long prompt " * 10, "answer": "1"}
    with pytest.raises(RewardError, match=r"returned inf .* prompt 'A very long prompt A"):
        call_reward(lambda c, **_: math.inf, "inf_reward", "x", row, {})
    assert call_reward(lambda c, answer: float(answer), "ok", "x", row, {}) == 1.0


def test_ray_join_that_never_answers_is_bounded(tmp_path: Path) -> None:
    # Something listens but never speaks Ray: the probe connects, ray.init would retry for
    # minutes. Run in a subprocess so its abandoned join thread dies with it.
    script = textwrap.dedent(
        """
        import socket, sys, time
        from alignlib.rollout.ray_cluster import ensure_ray
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        began = time.monotonic()
        try:
            ensure_ray(f"127.0.0.1:{server.getsockname()[1]}", timeout_s=2)
        except TimeoutError as exc:
            print(f"{time.monotonic() - began:.1f} {exc}")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    seconds, _, message = done.stdout.strip().partition(" ")
    assert "no Ray cluster answered within 2 s" in message, done.stdout + done.stderr
    assert float(seconds) < 6
