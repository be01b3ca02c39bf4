"""`alignlib eval` end to end on a tiny random model, exact metrics with a scripted engine,
model loading (HF folder, LoRA run folder), in-training evaluation, --compare, CLI errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from alignlib.cli import main
from alignlib.eval.cli import add_eval_parser, build_config
from alignlib.eval.config import EvalConfig
from alignlib.eval.datasets import BENCHMARKS, load_benchmark
from alignlib.eval.loading import load_eval_model
from alignlib.eval.runner import evaluate, evaluate_in_loop
from alignlib.rollout.base import Generation, Prompts, RolloutEngine, SamplingParams
from alignlib.testing import build_tiny_model, build_tokenizer


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    tokenizer = build_tokenizer()
    return build_tiny_model(tokenizer, init_std=0.2), tokenizer


@pytest.fixture(scope="module")
def two_runs(tiny, tmp_path_factory) -> list[dict[str, Any]]:
    """The same seeded evaluation twice: 5 problems of every benchmark, greedy + 2 samples."""
    model, tokenizer = tiny
    results = []
    for run in ("a", "b"):
        out = tmp_path_factory.mktemp(f"eval-{run}")
        config = EvalConfig(
            benchmarks=list(BENCHMARKS), n=2, limit=5, max_new_tokens=8, seed=3, output_dir=str(out)
        )
        evaluate(config, model, tokenizer)
        results.append(
            {"path": out / "results.json", **json.loads((out / "results.json").read_text())}
        )
    return results


def test_results_cover_every_benchmark_and_problem(two_runs):
    results = two_runs[0]
    assert list(results["records"]) == list(BENCHMARKS)
    assert list(results["metrics"]) == [*BENCHMARKS, "average"]
    assert results["config"]["n"] == 2
    for bench in BENCHMARKS:
        records = results["records"][bench]
        assert [r["answer"] for r in records] == [
            r["answer"] for r in load_benchmark(bench, limit=5)
        ]
        for record in records:
            assert record["problem"] in record["prompt"] and "\\boxed{}" in record["prompt"]
            gens = [record["greedy"], *record["samples"]]
            assert len(record["samples"]) == 2
            for g in gens:
                assert set(g) == {"text", "extracted", "correct", "finish_reason", "num_tokens"}
                assert 1 <= g["num_tokens"] <= 8 and isinstance(g["correct"], bool)
        metrics = results["metrics"][bench]
        assert metrics["num_problems"] == 5 and metrics["num_samples"] == 15
        for key in ("pass@1", "avg@2", "pass@2", "maj@2", "truncated"):
            assert 0.0 <= metrics[key] <= 1.0, (bench, key)
        low, high = metrics["pass@1_ci"]
        assert 0.0 <= low <= metrics["pass@1"] <= high <= 1.0
        assert metrics["avg@2"] <= metrics["pass@2"]  # avg@n is the unbiased pass@1
    assert results["metrics"]["average"]["num_problems"] == 5 * len(BENCHMARKS)


def test_same_seed_gives_identical_results(two_runs):
    first, second = two_runs
    assert first["metrics"] == second["metrics"]
    assert first["records"] == second["records"]  # every generation, answer and verdict


class ScriptedEngine(RolloutEngine):
    """Answers each prompt with fixed texts: one for the greedy pass, `n` for the sampled pass."""

    def __init__(self, greedy: dict[str, str], samples: dict[str, list[str]]) -> None:
        self.greedy, self.samples = greedy, samples
        self.calls: list[SamplingParams] = []

    def generate(self, prompts: Prompts, sampling: SamplingParams) -> list[list[Generation]]:
        self.calls.append(sampling)
        out = []
        for i, prompt in enumerate(prompts):
            (problem,) = [p for p in self.greedy if p in prompt]
            texts = [self.greedy[problem]] if sampling.greedy else self.samples[problem]
            assert len(texts) == sampling.n
            out.append([_gen(i, s, text) for s, text in enumerate(texts)])
        return out

    def update_weights(self, weights) -> None:
        raise AssertionError("evaluation never sends weights to its engine")


def _gen(i: int, s: int, text: str) -> Generation:
    return Generation(i, [1], [5, 6], text, [-1.0, -1.0], "stop", sample_index=s)


def test_metrics_are_exact_with_scripted_answers(tmp_path):
    rows = load_benchmark("gsm8k", limit=4)
    p, a = [r["problem"] for r in rows], [r["answer"] for r in rows]
    box = "\\boxed{{{}}}".format
    right = [box(x) for x in a]
    # p0: a different form of the right answer, graded by math-verify, not string equality.
    greedy = {p[0]: box(f"\\frac{{{2 * int(a[0])}}}{{2}}"), p[1]: box(7), p[2]: right[2], p[3]: "?"}
    samples = {
        p[0]: [right[0]] * 4,  # 4/4 correct
        p[1]: [right[1], box(7), box(7), "no box"],  # 1/4, majority of 4 is the wrong 7
        p[2]: [box(5), right[2], right[2], box(6)],  # 2/4, first-two tie goes to the wrong 5
        p[3]: ["no", "answer", "at", "all"],  # 0/4, nobody votes
    }
    engine = ScriptedEngine(greedy, samples)
    config = EvalConfig(
        benchmarks=["gsm8k"],
        limit=4,
        n=4,
        temperature=0.7,
        top_p=0.9,
        top_k=20,
        min_p=0.05,
        output_dir=str(tmp_path),
    )
    report = evaluate(config, engine=engine)
    m = report.metrics["gsm8k"]
    assert m["pass@1"] == 0.5  # greedy: p0, p2
    assert m["avg@4"] == pytest.approx((1 + 0.25 + 0.5 + 0) / 4)
    assert m["pass@2"] == pytest.approx((1 + 0.5 + 5 / 6 + 0) / 4)  # 1 - C(n-c,2)/C(4,2)
    assert m["pass@4"] == 0.75
    assert m["maj@2"] == 0.5  # p0 and p1 (tie between right and 7: the first answer wins)
    assert m["maj@4"] == 0.5  # p0 and p2
    assert m["num_samples"] == 4 * 5 and m["truncated"] == 0.0
    assert m["avg@4"] <= m["pass@2"] <= m["pass@4"]
    assert report.metrics["average"]["pass@1"] == 0.5
    greedy_call, sampled_call = engine.calls
    assert greedy_call.greedy and greedy_call.n == 1
    call = sampled_call
    sampled = (call.n, call.temperature, call.top_p, call.top_k, call.min_p)
    assert sampled == (4, 0.7, 0.9, 20, 0.05)
    assert sampled_call.seed is not None
    saved = json.loads((tmp_path / "results.json").read_text())
    record = saved["records"]["gsm8k"][1]
    assert [s["extracted"] for s in record["samples"]] == [a[1], "7", "7", None]
    assert [s["correct"] for s in record["samples"]] == [True, False, False, False]
    assert saved["records"]["gsm8k"][0]["greedy"]["correct"] is True


def test_without_greedy_pass1_is_the_sample_mean(tmp_path):
    rows = load_benchmark("gsm8k", limit=2)
    greedy = {r["problem"]: "" for r in rows}
    answer = rows[0]["answer"]
    samples = {rows[0]["problem"]: [f"\\boxed{{{answer}}}", "x"], rows[1]["problem"]: ["y", "z"]}
    config = EvalConfig(benchmarks=["gsm8k"], limit=2, n=2, greedy_pass1=False)
    report = evaluate(config, engine=ScriptedEngine(greedy, samples))
    assert report.metrics["gsm8k"]["pass@1"] == report.metrics["gsm8k"]["avg@2"] == 0.25
    assert all(r["greedy"] is None for r in report.records["gsm8k"])


def test_lora_run_folder_is_merged_and_default_output_is_run_eval(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    base = build_tiny_model(tokenizer, init_std=0.2)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, lora).eval()
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    run = tmp_path / "run"
    peft_model.save_pretrained(run / "final")
    tokenizer.save_pretrained(run / "final")

    merged, _ = load_eval_model(str(run))
    ids = torch.tensor([tokenizer.encode("What is 2 + 3?")])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft_model(ids).logits, atol=1e-5)
        assert not torch.allclose(merged(ids).logits, model(ids).logits, atol=1e-3)
    config = EvalConfig(model=str(run), benchmarks=["gsm8k"], limit=1, max_new_tokens=2)
    report = evaluate(config)
    assert report.output_path == run / "eval" / "results.json" and report.output_path.is_file()
    assert report.model == "run"


def test_in_loop_eval_returns_flat_metrics_and_restores_the_model(tiny, tmp_path):
    model, tokenizer = tiny
    model.train()
    model.config.use_cache = False
    config = EvalConfig(
        benchmarks=["gsm8k", "amc23"], limit=2, max_new_tokens=4, output_dir=str(tmp_path)
    )
    try:
        metrics = evaluate_in_loop(model, tokenizer, config, step=3)
        assert model.training and model.config.use_cache is False
    finally:
        model.eval()
        model.config.use_cache = True
    assert {"eval/gsm8k/pass@1", "eval/amc23/pass@1", "eval/average/pass@1"} <= set(metrics)
    assert all(isinstance(v, float) and 0 <= v <= 1 for v in metrics.values())
    assert (tmp_path / "step-3" / "results.json").is_file()


def test_cli_evaluates_a_saved_model(tiny, tmp_path, capsys):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tmp_path / "model"), "--benchmarks", "gsm8k,aime24"]
    argv += ["--limit", "2", "--max-new-tokens", "3", "--output-dir", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "gsm8k" in printed and "aime24" in printed and "pass@1" in printed
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["max_new_tokens"] == 3 and saved["model"] == "model"


def test_compare_writes_a_png(two_runs, tmp_path, capsys):
    chart = tmp_path / "chart.png"
    files = [str(r["path"]) for r in two_runs]
    assert main(["eval", "--compare", *files, "--labels", "a,b", "--output", str(chart)]) == 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(chart) in capsys.readouterr().out


def test_config_file_eval_section_with_flag_overrides(tmp_path):
    import argparse

    (tmp_path / "mine.jsonl").write_text(json.dumps({"q": "1+1?", "a": 2}) + "\n")
    cfg = {"eval": {"model": "bundled:smollm2-135m-instruct", "benchmarks": ["mine.jsonl"], "n": 4}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers())
    argv = ["eval", "--config", str(tmp_path / "run.yaml"), "--n", "8"]
    config = build_config(parser.parse_args([*argv, "--top-k", "20", "--min-p", "0.1"]))
    assert config.n == 8 and config.resolved_ks() == [2, 4, 8]
    assert (config.top_k, config.min_p) == (20, 0.1)
    assert config.benchmarks == [str(tmp_path / "mine.jsonl")]  # relative to the config file
    rows = load_benchmark(config.benchmarks[0], problem_field="q", answer_field="a")
    assert rows[0]["answer"] == "2"


def _error_line(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alignlib: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--benchmarks", "gsm8k,math5000"], "unknown benchmark 'math5000'"),
        (["--benchmarks", "nope.jsonl"], "benchmark file 'nope.jsonl' does not exist"),
        (["--n", "0"], "eval.n: Input should be greater than or equal to 1"),
    ],
)
def test_cli_bad_settings_fail_in_one_line(argv, expected, capsys):
    err = _error_line(["eval", "--model", "bundled:smollm2-135m-instruct", *argv], capsys)
    assert expected in err
    if "unknown benchmark" in expected:
        assert "math500" in err and "olympiadbench" in err and "(did you mean 'math500'?)" in err


def test_cli_model_errors_fail_in_one_line(tmp_path, capsys):
    assert "pass --model" in _error_line(["eval", "--benchmarks", "gsm8k"], capsys)
    missing = str(tmp_path / "no-such-model")
    err = _error_line(["eval", "--model", missing, "--benchmarks", "gsm8k"], capsys)
    assert f"model path '{missing}' does not exist" in err
    (tmp_path / "empty").mkdir()
    err = _error_line(["eval", "--model", str(tmp_path / "empty")], capsys)
    assert "eval.model:" in err and "has no config.json" in err
    err = _error_line(["eval", "--compare", str(tmp_path / "x.json")], capsys)
    assert "does not exist" in err
    (tmp_path / "bad.yaml").write_text("eval:\n  model: m\n  n: 2\n  ks: [4]\n")
    err = _error_line(["eval", "--config", str(tmp_path / "bad.yaml")], capsys)
    assert err == (
        "alignlib: error: eval.ks: k=4 is not in [2, n=2] (raise n to draw at least k samples; "
        "pass@1 is always reported) (got [4])"
    )
    assert EvalConfig(model="m", n=4, ks=[2, 4]).resolved_ks() == [2, 4]
    err = _error_line(["eval", "--model", "tiny:llamma", "--benchmarks", "gsm8k"], capsys)
    assert "eval.model: unknown model 'tiny:llamma'; valid: tiny:llama, bundled:" in err


def test_cli_field_flags_name_benchmark_columns(tmp_path, capsys):
    (tmp_path / "qb.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    common = ["eval", "--model", "tiny:llama", "--benchmarks", str(tmp_path / "qb.jsonl")]
    common += ["--max-new-tokens", "2", "--output-dir", str(tmp_path / "out")]
    err = _error_line(common, capsys)
    assert "row has no field 'problem' (fields: question, answer); name the right one with " in err
    assert "eval.problem_field in the YAML or --problem-field on the command line" in err
    assert main([*common, "--problem-field", "question"]) == 0
    assert (tmp_path / "out" / "results.json").is_file()


@pytest.mark.slow
def test_bundled_smollm2_on_three_gsm8k_problems(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = EvalConfig(
        model="bundled:smollm2-135m-instruct",
        benchmarks=["gsm8k"],
        limit=3,
        max_new_tokens=256,
        output_dir=str(tmp_path),
    )
    report = evaluate(config)
    records = report.records["gsm8k"]
    assert len(records) == 3
    # A real instruction-tuned model writes English about the problem, unlike a random one.
    assert all(len(r["greedy"]["text"].split()) > 20 for r in records)
    assert 0.0 <= report.metrics["gsm8k"]["pass@1"] <= 1.0
    assert (Path(tmp_path) / "results.json").is_file()
