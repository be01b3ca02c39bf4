"""`eval.verifier`: a learned reward model (or PRM) scores every sample, and best@k is the
accuracy of the sample it rates highest among the first k (checked against the scorer called
here and a loop over the samples); misuse is one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_eval_runner import ScriptedEngine
from test_process_rewards import tiny_head_model
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
)

from alignlib.cli import main
from alignlib.eval.config import EvalConfig
from alignlib.eval.datasets import load_benchmark
from alignlib.eval.metrics import best_of_k
from alignlib.eval.runner import evaluate
from alignlib.rewards import ProcessRewardScorer, RewardModelScorer


def test_best_of_k_picks_the_highest_score_first_on_ties() -> None:
    correct = [False, True, False, True]
    assert best_of_k([0.1, 0.9, 0.3, 0.2], correct, 4) is True
    assert best_of_k([0.1, 0.9, 0.3, 0.2], correct, 1) is False
    assert best_of_k([0.5, 0.5, 0.1, 0.9], correct, 2) is False  # tie: the first
    assert best_of_k([0.5, 0.5, 0.1, 0.9], correct, 4) is True
    with pytest.raises(ValueError, match="k must be in"):
        best_of_k([0.1], [True], 2)
    with pytest.raises(ValueError, match="one score per sample"):
        best_of_k([0.1, 0.2], [True], 1)


def scripted() -> ScriptedEngine:
    rows = load_benchmark("gsm8k", limit=3)
    box = "\\boxed{{{}}}".format
    samples = {
        r["problem"]: [box(r["answer"]), f"First step\nthen {box(7)}", "no box", box(r["answer"])]
        for r in rows
    }
    return ScriptedEngine({r["problem"]: "" for r in rows}, samples)


@pytest.mark.parametrize("kind", ["reward_model", "process_reward_model"])
def test_best_at_k_follows_the_verifiers_scores(tmp_path: Path, kind: str) -> None:
    head = LlamaForSequenceClassification if kind == "reward_model" else LlamaForTokenClassification
    folder = tiny_head_model(tmp_path, head, labels=1 if kind == "reward_model" else 2)
    engine = scripted()
    params = {"path": str(folder)} | ({"reduce": "mean"} if kind != "reward_model" else {})
    config = EvalConfig(
        benchmarks=["gsm8k"], limit=3, n=4, device="cpu", verifier={"name": kind, "params": params}
    )
    report = evaluate(config, engine=engine)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if kind == "reward_model":
        model = LlamaForSequenceClassification.from_pretrained(folder)
        score = RewardModelScorer(model, tokenizer)
    else:
        prm = ProcessRewardScorer(
            AutoModelForTokenClassification.from_pretrained(folder), tokenizer
        )
        score = lambda ps, cs: [sum(s) / len(s) for s in prm(ps, cs)]  # noqa: E731
    records = report.records["gsm8k"]
    for record in records:
        texts = [s["text"] for s in record["samples"]]
        want = score([record["prompt"]] * len(texts), texts)
        assert [s["verifier"] for s in record["samples"]] == pytest.approx(want, abs=1e-5)
        assert len({round(w, 6) for w in want}) > 1  # the verifier does tell samples apart
    for k in (2, 4):
        picks = []
        for record in records:
            samples = record["samples"][:k]
            best = max(samples, key=lambda s: s["verifier"])  # max keeps the first of ties
            picks.append(float(best["correct"]))
        assert report.metrics["gsm8k"][f"best@{k}"] == pytest.approx(sum(picks) / len(picks))
    assert "best@4" in report.metrics["average"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--n", "1"], "set n >= 2"),
        (["--n", "2", "steps"], "reduce: steps places step rewards for training"),
    ],
)
def test_verifier_misuse_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    import yaml

    folder = tiny_head_model(tmp_path, LlamaForTokenClassification, labels=2)
    params = {"path": str(folder)} | ({"reduce": "steps"} if "steps" in flags else {})
    config = tmp_path / "eval.yaml"
    verifier = {"name": "process_reward_model", "params": params}
    config.write_text(
        yaml.safe_dump({"eval": {"model": "bundled:smollm2-135m-instruct", "verifier": verifier}})
    )
    capsys.readouterr()
    n = [f for f in flags if f != "steps"]
    assert main(["eval", "--config", str(config), *n]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and expected in err[0], err
