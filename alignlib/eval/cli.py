"""`alignlib eval`: evaluate a model on math benchmarks, or chart several results.json files."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from alignlib.eval.config import EvalConfig

# Flags (argparse dest) that map one-to-one onto EvalConfig fields. They default to None, so
# only the flags actually given override the config file.
_FIELDS = (
    "model",
    "benchmarks",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_new_tokens",
    "limit",
    "seed",
    "engine",
    "num_workers",
    "batch_size",
    "output_dir",
    "problem_field",
    "answer_field",
)


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `eval` command to `alignlib`'s subcommands."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model on math benchmarks (or --compare results)",
        description="Generate answers to math benchmarks, grade them with the training grader, "
        "print a table and write results.json. With --compare, chart earlier results instead.",
    )
    p.add_argument("--model", help="HF folder, run folder, or bundled:smollm2-135m-instruct")
    p.add_argument(
        "--benchmarks", type=_csv, help="comma-separated, e.g. math500,aime24 or a.jsonl"
    )
    p.add_argument("--n", type=int, help="samples per problem (default 1: greedy only)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default 0.6)")
    p.add_argument("--top-p", type=float, help="nucleus mass (default 0.95)")
    p.add_argument("--top-k", type=int, help="most likely tokens kept (default 0: all)")
    p.add_argument("--min-p", type=float, help="least probability vs the top token (default 0)")
    p.add_argument("--max-new-tokens", type=int, help="completion length cap (default 512)")
    p.add_argument("--limit", type=int, help="first N problems of each benchmark")
    p.add_argument("--seed", type=int, help="sampling seed (default 0)")
    p.add_argument("--engine", choices=["transformers", "vllm"], help="default: transformers")
    p.add_argument("--num-workers", type=int, help="Ray rollout workers (default 0: in-process)")
    p.add_argument("--batch-size", type=int, help="sequences per generation batch (default 16)")
    p.add_argument("--output-dir", help="folder for results.json")
    p.add_argument("--problem-field", help="question field of .jsonl benchmarks (problem)")
    p.add_argument("--answer-field", help="reference-answer field of .jsonl benchmarks (answer)")
    p.add_argument(
        "--environment",
        help="answer in multi-turn episodes with this environment (calculator, module:Class)",
    )
    p.add_argument("--config", help="YAML file; its eval: section is the base, flags override it")
    p.add_argument("--compare", nargs="+", metavar="RESULTS", help="results.json files to chart")
    p.add_argument("--labels", type=_csv, help="comma-separated run names for --compare")
    p.add_argument("--metric", default="pass@1", help="metric to chart with --compare")
    p.add_argument("--output", default="comparison.png", help="PNG path for --compare")
    p.set_defaults(run=run_eval)
    return p


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def run_eval(args: argparse.Namespace) -> int:
    """Entry point of `alignlib eval`."""
    if args.compare:
        from alignlib.eval.report import compare_chart

        print(compare_chart(args.compare, args.output, args.labels, args.metric))
        return 0
    config = build_config(args)

    from rich.console import Console

    from alignlib.eval.runner import evaluate

    console = Console(stderr=True)
    began = time.perf_counter()
    with console.status("loading the model") as status:

        def progress(bench: str, done: int, total: int) -> None:
            line = f"{bench}: {done}/{total} prompts ({time.perf_counter() - began:.0f} s)"
            if console.is_terminal:
                status.update(line)
            else:  # logs of batch jobs: a line per generation call instead of a spinner
                console.print(line, highlight=False)

        report = evaluate(config, progress=progress)
    Console().print(report.table())
    print(f"results: {report.output_path}")
    return 0


def build_config(args: argparse.Namespace) -> EvalConfig:
    """The YAML file's `eval:` section (if any) with the given flags on top, validated."""
    raw: dict[str, Any] = _eval_section(Path(args.config)) if args.config else {}
    raw.update({key: getattr(args, key) for key in _FIELDS if getattr(args, key) is not None})
    environment = getattr(args, "environment", None)
    if environment is not None:  # the name only; the YAML section may set the rest
        raw["environment"] = {**(raw.get("environment") or {}), "name": environment}
    if not raw.get("model"):
        raise ValueError(
            "no model: pass --model (a model folder, a run folder or "
            "bundled:smollm2-135m-instruct) or --config with eval.model"
        )
    try:
        return EvalConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"] if isinstance(p, str)) or "(section)"
        message = first["msg"].removeprefix("Value error, ")
        if "input" in first and not isinstance(first["input"], dict):
            message += f" (got {first['input']!r})"
        more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise ValueError(f"eval.{key}: {message}{more}") from None


def _eval_section(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({getattr(err, 'problem', err)})") from None
    section = data.get("eval") if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise ValueError(f"{path}: no eval: section (a mapping of eval settings)")
    section = dict(section)
    if not section.get("model"):
        section["model"] = _trained_model(data)
    # Relative .jsonl benchmarks are relative to the config file, like data.path in training.
    benches = section.get("benchmarks")
    if isinstance(benches, list):
        section["benchmarks"] = [_relative_to(b, path.parent) for b in benches]
    return section


def _trained_model(data: dict[str, Any]) -> str | None:
    """The model this config trains: its output_dir once it has final/, else the base model."""
    out = Path(data.get("output_dir") or "runs/default")
    if (out / "final").is_dir() or (out / "merged").is_dir():
        return str(out)
    model = data.get("model")
    return model.get("name_or_path") if isinstance(model, dict) else None


def _relative_to(name: Any, base: Path) -> Any:
    if not isinstance(name, str) or not name.endswith(".jsonl") or Path(name).is_absolute():
        return name
    candidate = base / name
    return str(candidate) if candidate.exists() or not Path(name).exists() else name
