"""Run an evaluation: prompts -> rollout engine -> the training grader -> metrics and results."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignlib.config.loader import check_output_dir
from alignlib.device import resolve_device
from alignlib.eval.config import EvalConfig, resolved_dtype
from alignlib.eval.datasets import load_benchmark
from alignlib.eval.loading import hf_folder_for, load_eval_model, model_label, resolve_model_dir
from alignlib.eval.report import AVERAGE, EvalReport, average_metrics, benchmark_metrics
from alignlib.eval.verifier import build_verifier, score_samples
from alignlib.rewards import extract_boxed, grade_many
from alignlib.rollout.base import Generation, RolloutEngine, SamplingParams
from alignlib.rollout.environment import resolve_environment
from alignlib.rollout.episode_router import check_rows_name_environments, episodes_for

Progress = Callable[[str, int, int], None]
"""Called as progress(benchmark, prompts_done, prompts_total) after every generation call."""


def evaluate(
    config: EvalConfig,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    engine: RolloutEngine | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """Evaluate a model on `config.benchmarks`; write results.json when there is an output folder.

    Args:
        config: What to evaluate and how.
        model, tokenizer: An in-memory model (e.g. the policy during training), run through an
            in-process transformers engine; `config.model`, `engine` and `num_workers` are then
            not used for loading. Without them, `config.model` is loaded.
        engine: Generate with this engine instead (e.g. a trainer's vLLM engine that already
            holds the current weights).
        progress: Optional callback for a progress display.

    results.json goes to `config.output_dir`; when eval loads the model itself and that is null,
    to `default_output_dir(config)`. With an in-memory model or engine, null writes nothing.
    """
    began = time.perf_counter()
    problems = _load_problems(config)  # first: a typo in a name fails before the model loads
    for key, spec in config.episode_sections().items():
        resolve_environment(spec.name, f"{key}.name")
    loads_model = model is None and engine is None
    if loads_model:
        if config.model is None:
            raise ValueError(
                "eval.model is not set: give a model folder, a run folder or "
                "bundled:smollm2-135m-instruct"
            )
        resolve_model_dir(config.model)  # a missing path fails now, with a clear message
        if config.episode_sections() and config.num_workers > 0:
            raise ValueError(_WORKERS_KEEP_TOKENIZER)
        if config.engine == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError(
                "--engine vllm: vLLM is not installed (pip install -e '.[vllm]' on a GPU "
                "machine); use --engine transformers"
            )
    out_dir = default_output_dir(config) if loads_model else config.output_dir
    if out_dir is not None:  # refused before the model loads, not after generation
        check_output_dir(Path(out_dir), "--output-dir")
    label = model_label(config.model) if config.model else "<in-memory model>"
    verifier = build_verifier(config, model)  # its folder is checked before the model loads

    records: dict[str, list[dict[str, Any]]] = {}
    with _engine(config, model, tokenizer, engine) as (gen, chunk):
        sample = _sampler(config, gen, tokenizer)
        for bench, rows in problems.items():
            prompts = [config.prompt_template.replace("{problem}", r["problem"]) for r in rows]
            records[bench] = _run_benchmark(config, bench, rows, prompts, sample, chunk, progress)
            score_samples(verifier, records[bench])
    metrics = {bench: benchmark_metrics(recs, config) for bench, recs in records.items()}
    metrics[AVERAGE] = average_metrics(metrics)
    report = EvalReport(config, metrics, records, label, time.perf_counter() - began)
    if out_dir is not None:
        report.save(out_dir)
    return report


def _load_problems(config: EvalConfig) -> dict[str, list[dict[str, Any]]]:
    """{benchmark label: its problem rows}, refusing two benchmarks of one name or an empty one."""
    problems = {
        config.benchmark_label(name): load_benchmark(
            name,
            problem_field=config.problem_field,
            answer_field=config.answer_field,
            limit=config.limit,
        )
        for name in config.benchmarks
    }
    if len(problems) != len(config.benchmarks):
        raise ValueError(f"benchmarks {config.benchmarks} share a name; rename a .jsonl file")
    names, field = list(config.environments), config.environment_field
    for bench, rows in problems.items():
        if not rows:
            raise ValueError(f"benchmark {bench!r} has no problems")
        if names:  # before the model loads: each row names one of eval.environments
            check_rows_name_environments(rows, names, field, f"benchmark {bench!r}", "eval")
    return problems


def evaluate_in_loop(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: EvalConfig,
    step: int,
    engine: RolloutEngine | None = None,
) -> dict[str, float]:
    """Evaluate the policy during training; returns `eval/<benchmark>/<metric>` scores.

    The model's train/eval mode and `model.config.use_cache` are restored afterwards. With
    `config.output_dir` set, results go to `output_dir/step-<step>/results.json`.
    """
    out_dir = None if config.output_dir is None else str(Path(config.output_dir) / f"step-{step}")
    step_config = config.model_copy(update={"output_dir": out_dir})
    was_training = model.training
    model_config = getattr(model, "config", None)
    use_cache = getattr(model_config, "use_cache", None)
    try:
        if model_config is not None:
            # Trainers switch the KV cache off for training; generation without it is quadratic.
            model_config.use_cache = True
        report = evaluate(step_config, model, tokenizer, engine=engine)
    finally:
        if model_config is not None:
            model_config.use_cache = use_cache
        model.train(was_training)
    return report.flat_metrics()


def default_output_dir(config: EvalConfig) -> str:
    """`output_dir`, else RUN/eval for a training run folder, else runs/eval/<model name>."""
    if config.output_dir is not None:
        return config.output_dir
    spec = config.model or "model"
    path = Path(spec).expanduser()
    if path.is_dir() and ((path / "final").is_dir() or (path / "merged").is_dir()):
        return str(path / "eval")
    return str(Path("runs") / "eval" / model_label(spec))


@contextlib.contextmanager
def _engine(
    config: EvalConfig,
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase | None,
    engine: RolloutEngine | None,
) -> Iterator[tuple[RolloutEngine, int]]:
    """The engine to generate with, and how many sequences to hand it per call."""
    if engine is not None:
        yield engine, config.batch_size
        return
    if model is not None:
        if tokenizer is None:
            raise ValueError("evaluate: pass the tokenizer together with the model")
        yield _hf_engine(model, tokenizer, config), config.batch_size
        return
    assert config.model is not None
    temp = None
    if config.engine == "vllm":
        dtype = resolved_dtype(config, resolve_device("auto"))
        folder, temp = hf_folder_for(config.model, dtype)
        factory = functools.partial(_vllm_engine, folder, config.chat_template, dtype)
        chunk = 1 << 30  # vLLM schedules its own batches: hand it whole benchmarks
    else:
        factory = functools.partial(_load_hf_engine, config.model, config)
        chunk = config.batch_size * max(1, config.num_workers)
    built: Any = None
    try:
        if config.num_workers > 0:
            from alignlib.rollout.ray_workers import RayRolloutPool

            gpus = 1.0 if config.engine == "vllm" and _has_cuda() else 0.0
            built = RayRolloutPool(factory, config.num_workers, num_gpus_per_worker=gpus)
        else:
            built = factory()
        yield built, chunk
    finally:
        if built is not None:
            built.shutdown()
        if temp is not None:
            temp.cleanup()


def _hf_engine(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: EvalConfig
) -> RolloutEngine:
    from alignlib.rollout.hf_engine import HFEngine

    return HFEngine(model, tokenizer, config.batch_size, apply_chat_template=config.chat_template)


# Module-level factories: Ray pickles them by reference into each worker process.
def _load_hf_engine(spec: str, config: EvalConfig) -> RolloutEngine:
    device = resolve_device(config.device)  # in a Ray worker: that worker's own device
    model, tokenizer = load_eval_model(spec, resolved_dtype(config, device), device)
    return _hf_engine(model, tokenizer, config)


def _vllm_engine(folder: str, chat_template: bool, dtype: str) -> RolloutEngine:
    from alignlib.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(folder, apply_chat_template=chat_template, dtype=dtype)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


_WORKERS_KEEP_TOKENIZER = (
    "eval.environment: episodes need the model's tokenizer in this process, which Ray workers "
    "keep to themselves; set num_workers: 0"
)
Sample = Callable[[list[str], list[dict[str, Any]], SamplingParams], list[list[Generation]]]
"""(prompts, their rows, sampling) → generations per prompt: one turn, or whole episodes."""


def _sampler(
    config: EvalConfig, engine: RolloutEngine, tokenizer: PreTrainedTokenizerBase | None
) -> Sample:
    """One generate call per chunk, or, with `eval.environment(s)`, multi-turn episodes."""
    if not config.episode_sections():
        return lambda prompts, rows, sampling: engine.generate(prompts, sampling)
    tokenizer = tokenizer or getattr(engine, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(_WORKERS_KEEP_TOKENIZER)
    runner = episodes_for(
        config.environment, config.environments, config.environment_field, tokenizer, "eval"
    )
    if runner is not None and runner.has_tools and not config.chat_template:
        raise ValueError(
            "eval.environment: its tools are shown by the chat template, and chat_template "
            "is false; set it to true"
        )
    return lambda prompts, rows, sampling: runner.run(engine, prompts, rows, sampling)


def _run_benchmark(
    config: EvalConfig,
    bench: str,
    rows: list[dict[str, Any]],
    prompts: list[str],
    sample: Sample,
    chunk: int,
    progress: Progress | None,
) -> list[dict[str, Any]]:
    passes: dict[str, SamplingParams] = {}
    if config.greedy_pass1:
        passes["greedy"] = SamplingParams(
            n=1, temperature=0.0, max_new_tokens=config.max_new_tokens
        )
    if config.sampled:
        passes["samples"] = SamplingParams(
            n=config.n,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            min_p=config.min_p,
            max_new_tokens=config.max_new_tokens,
        )
    outputs = {
        kind: _generate(sample, prompts, rows, sampling, config.seed, bench, chunk, progress)
        for kind, sampling in passes.items()
    }
    # One grade_many call per benchmark: the math-verify work spreads over the whole pool.
    flat = [g for gens_per_prompt in outputs.values() for gens in gens_per_prompt for g in gens]
    verdicts = grade_many([g.text for g in flat], [rows[g.prompt_index]["answer"] for g in flat])
    graded = dict(zip(map(id, flat), verdicts, strict=True))
    records = []
    for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
        per_kind = {
            kind: [_record(g, graded[id(g)]) for g in out[i]] for kind, out in outputs.items()
        }
        records.append(
            {
                "index": i,
                "problem": row["problem"],
                "answer": row["answer"],
                "prompt": prompt,
                "greedy": per_kind["greedy"][0] if "greedy" in per_kind else None,
                "samples": per_kind.get("samples", []),
            }
        )
    return records


def _generate(
    sample: Sample,
    prompts: list[str],
    rows: list[dict[str, Any]],
    sampling: SamplingParams,
    seed: int,
    bench: str,
    chunk: int,
    progress: Progress | None,
) -> list[list[Generation]]:
    """Generate in chunks of similar-length prompts; results in prompt order, prompt_index set."""
    # Sorting by length keeps left padding (wasted compute on CPU) small within each batch.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    per_call = max(1, chunk // sampling.n)
    out: list[list[Generation]] = [[] for _ in prompts]
    for start in range(0, len(order), per_call):
        idx = order[start : start + per_call]
        # One seed per (seed, benchmark, chunk): crc32 is stable across processes (hash(str) is
        # not), and a benchmark's samples do not depend on which other benchmarks run with it.
        key = f"{seed}/{bench}/{start}".encode()
        params = (
            sampling if sampling.greedy else dataclasses.replace(sampling, seed=zlib.crc32(key))
        )
        chunk_rows = [rows[i] for i in idx]
        for i, gens in zip(idx, sample([prompts[i] for i in idx], chunk_rows, params), strict=True):
            for g in gens:
                g.prompt_index = i
            out[i] = gens
        if progress is not None:
            progress(bench, min(start + per_call, len(order)), len(order))
    return out


def _record(gen: Generation, correct: bool) -> dict[str, Any]:
    record = {
        "text": gen.text,
        "extracted": extract_boxed(gen.text),
        "correct": bool(correct),
        "finish_reason": gen.finish_reason,
        "num_tokens": len(gen.token_ids),
    }
    if gen.loss_mask is not None:  # an episode: how many turns the model took
        record["turns"] = gen.turns
    if gen.environment_reward is not None:  # its get_reward() plus its turn rewards
        record["environment_reward"] = gen.environment_reward
    return record
