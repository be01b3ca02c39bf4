"""Shared by the paper-reproduction examples (RPO vs DPO, BVPO gradient variance, TOPR
off-policy, OTB variance, M2PO on stale rollouts, RAFT++ and Reinforce-Rej).

Both need a model whose correct answers are already likely, and both must run in minutes on a
CPU. So the model is `tiny:llama` (2 layers, hidden 64, random init) first taught the builtin
arithmetic task (`alignlib.data.tasks`: one-digit sums and differences) by SFT through the
library's own Trainer; preference runs then start from that checkpoint. Prompts of the
preference stage are problems the SFT stage never saw.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignlib import Trainer
from alignlib.config import RunConfig
from alignlib.data.tasks import arithmetic_train
from alignlib.trainer.loop import TrainResult

SFT_PROBLEMS = 1600
"""The first 1,600 builtin arithmetic problems teach the task; the other 400 are for the
preference stage (never seen in SFT)."""

_EQUATION = re.compile(r"^(\d+) ([+-]) (\d+) = (\d+)\.")


@dataclass(frozen=True)
class Problem:
    prompt: str
    a: int
    op: str
    b: int

    @property
    def value(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    def solution(self, value: int | None = None) -> str:
        """The builtin demonstration, or the same text with a wrong ``value``."""
        v = self.value if value is None else value
        return f"{self.a} {self.op} {self.b} = {v}. The answer is \\boxed{{{v}}}."


def problems() -> list[Problem]:
    """The 2,000 builtin arithmetic problems, parsed from their demonstrations."""
    out = []
    for row in arithmetic_train():
        match = _EQUATION.match(row["solution"])
        assert match is not None, row["solution"]
        a, op, b, _ = match.groups()
        out.append(Problem(row["prompt"], int(a), op, int(b)))
    return out


def wrong_value(value: int, rng: random.Random) -> int:
    """A wrong but plausible answer: off by 1 to 3, never negative."""
    candidates = [value + d for d in (-3, -2, -1, 1, 2, 3) if value + d >= 0]
    return rng.choice(candidates)


def one_thread() -> None:
    """A 64-wide model gains nothing from more threads, and on a busy 2-core machine extra
    threads only spin: the timings in docs/results.md are one thread."""
    import torch

    torch.set_num_threads(1)


def example_args(argv: list[str] | None, doc: str, name: str) -> argparse.Namespace:
    """--out (default examples/results/<name>) and --quick, the flags every example takes."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("examples/results") / name)
    parser.add_argument("--quick", action="store_true", help="a plumbing check, seconds")
    return parser.parse_args(argv)


def run_seeds(
    run_seed: Callable[[int, Any, Path], dict[str, Any]], scale: Any
) -> tuple[dict[int, dict[str, Any]], float]:
    """``run_seed(seed, scale, folder)`` for each of ``scale.seeds``, each in its own temporary
    folder on one torch thread; (the runs by seed, their wall-clock seconds)."""
    one_thread()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {s: run_seed(s, scale, Path(tmp) / f"seed{s}") for s in scale.seeds}
    return runs, time.perf_counter() - began


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def offline_config(
    output_dir: Path, model: str, data: Path, algorithm: dict[str, Any], **train: Any
) -> RunConfig:
    """A full-weight offline run with a constant learning rate; ``train`` holds lr, steps,
    batch_size and seed."""
    return RunConfig.model_validate(
        {
            "output_dir": str(output_dir),
            "model": {"name_or_path": model},
            "data": {"path": str(data), "max_prompt_length": 96, "max_completion_length": 96},
            "algorithm": algorithm,
            "optim": {"lr": train["lr"], "warmup_ratio": 0.0, "schedule": "constant"},
            "train": {
                "batch_size": train["batch_size"],
                "micro_batch_size": train["batch_size"],
                "max_steps": train["steps"],
                "seed": train["seed"],
            },
            "logging": {"progress": False, "report_to": [], "plot": False},
        }
    )


def train(config: RunConfig) -> tuple[TrainResult, float]:
    """(the run's result, its wall-clock seconds)."""
    began = time.perf_counter()
    result = Trainer(config).train()
    return result, time.perf_counter() - began


def sft_tiny(
    work: Path, responses: list[dict[str, str]], steps: int, seed: int
) -> tuple[Path, float]:
    """SFT `tiny:llama` on {prompt, completion} rows; (its final/ checkpoint, seconds)."""
    data = write_jsonl(work / "sft.jsonl", responses)
    config = offline_config(
        work / "sft",
        "tiny:llama",
        data,
        {"name": "sft"},
        lr=3e-3,
        steps=steps,
        batch_size=32,
        seed=seed,
    )
    result, seconds = train(config)
    return result.output_dir / "final", seconds


def taught_policy(work: Path, steps: int, seed: int) -> tuple[Path, list[Problem], random.Random]:
    """SFT `tiny:llama` for ``steps`` on the first SFT_PROBLEMS problems in the seed's order;
    (its final/ checkpoint, the problems SFT never saw, the seed's stream to draw them with)."""
    rng = random.Random(seed)
    every = problems()
    rows = [{"prompt": p.prompt, "completion": p.solution()} for p in every[:SFT_PROBLEMS]]
    rng.shuffle(rows)
    checkpoint, _ = sft_tiny(work, rows, steps, seed)
    return checkpoint, every[SFT_PROBLEMS:], rng


def each_method(
    seed: int,
    scale: Any,
    work: Path,
    methods: Sequence[str],
    train_method: Callable[..., dict[str, list[float]]],
) -> dict[str, Any]:
    """One seed of an online example: μ taught for ``scale.sft_steps``, then
    ``train_method(method, checkpoint, pool, heldout, scale)`` for each method from μ's weights,
    ``heldout`` the first ``scale.heldout`` problems SFT never saw (in the seed's order), ``pool``
    the rest."""
    checkpoint, unseen_by_sft, rng = taught_policy(work, scale.sft_steps, seed)
    rng.shuffle(unseen_by_sft)
    heldout, pool = unseen_by_sft[: scale.heldout], unseen_by_sft[scale.heldout :]
    return {m: train_method(m, checkpoint, pool, heldout, scale) for m in methods}


def window_mean(values: list[float], which: str = "late", fraction: float = 0.25) -> float:
    """The mean of the first (``early``) or last (``late``) ``fraction`` of ``values``."""
    k = max(1, int(len(values) * fraction))
    chosen = values[:k] if which == "early" else values[-k:]
    return sum(chosen) / len(chosen)


def sampled_answers(
    model: Any, tokenizer: Any, chosen: list[Problem], samples: int, seed: int
) -> dict[str, Any]:
    """``samples`` answers (T = 1, at most 32 tokens) to each of ``chosen`` from ``model``,
    graded against the true value: right-padded ``ids``, ``attention``, completion ``mask``,
    ``right`` (bools) and ``groups`` (each answer's problem index)."""
    import torch

    from alignlib.data.collate import prompt_ids
    from alignlib.rewards import grade_many
    from alignlib.rollout.base import SamplingParams
    from alignlib.rollout.hf_engine import HFEngine

    engine = HFEngine(model, tokenizer, apply_chat_template=False)
    prompts = [prompt_ids(tokenizer, p.prompt, chat=False) for p in chosen]
    sampling = SamplingParams(n=samples, temperature=1.0, max_new_tokens=32, seed=seed)
    answers = [g for gens in engine.generate(prompts, sampling) for g in gens]
    truth = [str(chosen[g.prompt_index].value) for g in answers]
    sequences = [prompts[g.prompt_index] + g.token_ids for g in answers]
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), tokenizer.pad_token_id)
    attention = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width)
    for r, (sequence, g) in enumerate(zip(sequences, answers, strict=True)):
        ids[r, : len(sequence)] = torch.tensor(sequence)
        attention[r, : len(sequence)] = 1
        mask[r, len(prompts[g.prompt_index]) : len(sequence)] = 1
    return {
        "ids": ids,
        "attention": attention,
        "mask": mask,
        "right": grade_many([g.text for g in answers], truth),
        "groups": torch.tensor([g.prompt_index for g in answers]),
    }


def scored_batch(
    model: Any,
    tokenizer: Any,
    pool: list[Problem],
    scale: Any,
    rng: random.Random,
    wrong: float = 0.0,
    reference: Any = None,
) -> dict[str, Any]:
    """The present policy's answers (``sampled_answers``) to ``scale.prompts`` problems drawn
    from ``pool``, ``scale.samples`` each, with its own log-probs (``old``: the sampler's, π_old
    or π_behaviour), ``reference``'s when given (``ref``), and ``rewards``: 1 for a right answer,
    ``wrong`` for the others."""
    import torch

    from alignlib.trainer.logprobs import token_logprobs

    chosen = rng.sample(pool, scale.prompts)
    model.eval()
    data = sampled_answers(model, tokenizer, chosen, scale.samples, rng.randrange(2**31))
    with torch.no_grad():
        data["old"] = token_logprobs(model, data["ids"], data["attention"])[0]
        if reference is not None:
            data["ref"] = token_logprobs(reference, data["ids"], data["attention"])[0]
    data["rewards"] = torch.tensor([1.0 if r else wrong for r in data["right"]])
    return data


def greedy_scores(model: Any, tokenizer: Any, heldout: list[Problem]) -> tuple[float, float]:
    """(greedy accuracy, share of answers with a boxed value) on ``heldout``."""
    from alignlib.data.collate import prompt_ids
    from alignlib.rewards import extract_boxed, grade_many
    from alignlib.rollout.base import SamplingParams
    from alignlib.rollout.hf_engine import HFEngine

    engine = HFEngine(model, tokenizer, apply_chat_template=False)
    prompts = [prompt_ids(tokenizer, p.prompt, chat=False) for p in heldout]
    texts = [
        g[0].text
        for g in engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=32))
    ]
    right = grade_many(texts, [str(p.value) for p in heldout])
    boxed = [extract_boxed(t) is not None for t in texts]
    return sum(right) / len(texts), sum(boxed) / len(texts)


def write_claims(
    args: argparse.Namespace,
    scale: Any,
    runs: dict[int, dict[str, Any]],
    seconds: float,
    claims: dict[str, bool],
    **extra: Any,
) -> Path:
    """results.json in ``args.out``: the setting, the seconds, ``extra``, the claims (each
    checked seed by seed), whether all hold, and the runs."""
    return write_results(
        args.out,
        {
            "setting": {"quick": args.quick, "scale": scale.__dict__},
            "seconds": seconds,
            **extra,
            "claims": claims,
            "claim_holds": all(claims.values()),
            "runs": runs,
        },
    )


def write_results(out: Path, results: dict[str, Any]) -> Path:
    """results.json in ``out`` (created): floats to 4 significant digits, lists of numbers on
    one line, so the file stays short and diffs stay readable."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(_dumps(results) + "\n")
    return path


def _dumps(value: Any, indent: str = "") -> str:
    if isinstance(value, float):
        return json.dumps(float(f"{value:.4g}"))
    if isinstance(value, dict):
        inner = indent + "  "
        items = [f"{inner}{json.dumps(str(k))}: {_dumps(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}" if items else "{}"
    if isinstance(value, list | tuple):
        parts = [_dumps(v, indent + "  ") for v in value]
        if all(not isinstance(v, dict | list | tuple) for v in value):
            return "[" + ", ".join(parts) + "]"
        return "[\n" + ",\n".join(indent + "  " + p for p in parts) + "\n" + indent + "]"
    return json.dumps(value, ensure_ascii=False)
