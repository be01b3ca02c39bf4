"""Metrics from graded records, the results table, results.json, and run-comparison charts."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from alignlib.console import notice
from alignlib.eval.config import EvalConfig
from alignlib.eval.metrics import avg_at_k, best_of_k, maj_at_k, mean_with_ci, pass_at_k
from alignlib.rewards import normalize_answer

AVERAGE = "average"
"""Pseudo-benchmark: the unweighted mean of each metric over the benchmarks."""


def benchmark_metrics(records: Sequence[dict[str, Any]], config: EvalConfig) -> dict[str, Any]:
    """pass@1 (greedy), avg@n, pass@k, maj@k with 95% CIs for one benchmark's graded records,
    and best@k (the sample the verifier scores highest) with `eval.verifier`."""
    if not records:
        raise ValueError("benchmark_metrics: no records (the benchmark has no problems?)")
    out: dict[str, Any] = {"num_problems": len(records)}
    gens = [g for r in records for g in ([r["greedy"]] if r["greedy"] else []) + r["samples"]]
    out["num_samples"] = len(gens)
    samples = [r["samples"] for r in records]
    per_problem_avg = [avg_at_k([s["correct"] for s in ss]) for ss in samples if ss]
    if config.greedy_pass1:
        _put(out, "pass@1", [float(r["greedy"]["correct"]) for r in records])
    else:
        _put(out, "pass@1", per_problem_avg)
    if config.sampled:
        _put(out, f"avg@{config.n}", per_problem_avg)
    for k in config.resolved_ks():
        counts = [sum(s["correct"] for s in ss) for ss in samples]
        out[f"pass@{k}"] = _mean([pass_at_k(config.n, c, k) for c in counts])
    for k in config.resolved_ks():
        votes = [
            maj_at_k([_vote(s["extracted"]) for s in ss], [s["correct"] for s in ss], k)
            for ss in samples
        ]
        out[f"maj@{k}"] = _mean([float(v) for v in votes])
    if config.verifier is not None:
        for k in config.resolved_ks():
            picks = [
                best_of_k([s["verifier"] for s in ss], [s["correct"] for s in ss], k)
                for ss in samples
            ]
            out[f"best@{k}"] = _mean([float(v) for v in picks])
    out["truncated"] = _mean([float(g["finish_reason"] == "length") for g in gens])
    return out


def average_metrics(per_benchmark: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over benchmarks of every score they all have (a macro average)."""
    tables = list(per_benchmark.values())
    keys = [k for k, v in tables[0].items() if isinstance(v, float) and all(k in t for t in tables)]
    out: dict[str, Any] = {"num_problems": sum(t["num_problems"] for t in tables)}
    out["num_samples"] = sum(t["num_samples"] for t in tables)
    out.update({k: _mean([t[k] for t in tables]) for k in keys})
    return out


def _put(out: dict[str, Any], key: str, values: Sequence[float]) -> None:
    mean, low, high = mean_with_ci(values)
    out[key] = mean
    out[f"{key}_ci"] = [low, high]


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _vote(extracted: str | None) -> str | None:
    # Votes compare normalized strings so that "0.5" and ".5" count as one answer.
    if extracted is None:
        return None
    return normalize_answer(extracted) or None


@dataclass
class EvalReport:
    """Everything one evaluation produced; `save` writes it as results.json."""

    config: EvalConfig
    metrics: dict[str, dict[str, Any]]
    """Per benchmark label, plus `average`: metric name -> value (CIs as [low, high])."""
    records: dict[str, list[dict[str, Any]]]
    """Per benchmark label: one record per problem with generations, answers, verdicts."""
    model: str = "<in-memory model>"
    wall_time_s: float = 0.0
    output_path: Path | None = field(default=None)

    def flat_metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Scores as `{prefix}/{benchmark}/{metric}` (no CIs or counts), for training logs."""
        return {
            f"{prefix}/{bench}/{key}": float(value)
            for bench, table in self.metrics.items()
            for key, value in table.items()
            if isinstance(value, float)
        }

    def to_json(self) -> dict[str, Any]:
        return _finite(
            {
                "model": self.model,
                "config": self.config.model_dump(mode="json"),
                "metrics": self.metrics,
                "wall_time_s": round(self.wall_time_s, 3),
                "records": self.records,
            }
        )

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / "results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")  # rename: a crash never leaves half a results file
        tmp.write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n")
        tmp.replace(path)
        self.output_path = path
        return path

    def table(self) -> Table:
        """A rich table: one row per benchmark and the average, scores in percent."""
        config = self.config
        ks = config.resolved_ks()
        columns = ["pass@1"] + ([f"avg@{config.n}"] if config.sampled else [])
        columns += [f"pass@{k}" for k in ks] + [f"maj@{k}" for k in ks]
        columns += [f"best@{k}" for k in ks] if config.verifier is not None else []
        columns += ["truncated"]
        title = f"{self.model}: pass@1 " + ("greedy" if config.greedy_pass1 else "sampled")
        if config.sampled:
            title += f"; {config.n} samples, T={config.temperature}, top-p={config.top_p}"
        table = Table(title=title, caption=f"% correct, pass@1 [95% CI]; {self.wall_time_s:.0f} s")
        table.add_column("benchmark")
        table.add_column("problems", justify="right")
        for col in columns:
            table.add_column(col, justify="right")
        for bench, m in self.metrics.items():
            cells = [_cell(m, col) for col in columns]
            table.add_row(bench, str(m["num_problems"]), *cells)
        return table


def _cell(metrics: dict[str, Any], key: str) -> str:
    if key not in metrics:
        return "-"
    text = f"{100 * metrics[key]:.1f}"
    # Only the headline pass@1 shows its interval: more would not fit an 80-column terminal.
    ci = metrics.get(f"{key}_ci") if key == "pass@1" else None
    if ci and not any(x is None or math.isnan(x) for x in ci):
        text += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return text


def _finite(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def compare_chart(
    results: Sequence[str | Path],
    output: str | Path,
    labels: Sequence[str] | None = None,
    metric: str = "pass@1",
) -> Path:
    """Grouped bar chart of `metric` per benchmark (and the average), one bar colour per run.

    Only the benchmarks every file scored on the same problems are charted, and the average is
    taken over those: averages over different sets would not compare. A notice line names the
    benchmarks left out."""
    if not results:
        raise ValueError("--compare: give at least one results.json")
    if labels is not None and len(labels) != len(results):
        raise ValueError(f"--labels: got {len(labels)} labels for {len(results)} results files")
    runs = [_read_results(p) for p in results]
    names = list(labels) if labels else _default_labels(results, runs)
    benches = shared_benchmarks(results, runs)
    if not any(metric in r["metrics"][b] for r in runs for b in benches):
        raise ValueError(f"--metric {metric!r} is in none of the results files")
    columns = benches + ([AVERAGE] if any(AVERAGE in r["metrics"] for r in runs) else [])
    values = {
        name: _chart_values(run, benches, metric) for name, run in zip(names, runs, strict=True)
    }
    return _draw(values, columns, metric, Path(output))


def shared_benchmarks(paths: Sequence[str | Path], runs: Sequence[dict[str, Any]]) -> list[str]:
    """The benchmarks that every run scored on the same problems, in order of appearance; one
    notice line names the others and why they were left out (none left: a ValueError)."""
    seen: list[str] = []
    for run in runs:
        seen += [b for b in run["metrics"] if b not in seen and b != AVERAGE]
    shared, left_out = [], []
    for bench in seen:
        missing = [str(p) for p, r in zip(paths, runs, strict=True) if bench not in r["metrics"]]
        if missing:
            left_out.append(f"{bench} (not in {', '.join(missing)})")
        elif not _same_problems(runs, bench):
            counts = [
                f"{r['metrics'][bench].get('num_problems')} in {p}"
                for p, r in zip(paths, runs, strict=True)
            ]
            left_out.append(f"{bench} (different problems: {', '.join(counts)})")
        else:
            shared.append(bench)
    if not shared:
        raise ValueError(
            f"--compare: the results files share no benchmark scored on the same problems "
            f"({'; '.join(left_out)}); evaluate the runs on the same benchmarks and --limit"
        )
    if left_out:
        notice(
            f"--compare: charting {', '.join(shared)} (and their average) only; left out "
            f"{'; '.join(left_out)}"
        )
    return shared


def _same_problems(runs: Sequence[dict[str, Any]], bench: str) -> bool:
    """Whether every run scored ``bench`` on the same problems (their texts, in any order; their
    number when a file has no records)."""
    texts = [_problem_texts(run, bench) for run in runs]
    if all(t is not None for t in texts):
        return len(set(texts)) == 1
    return len({run["metrics"][bench].get("num_problems") for run in runs}) == 1


def _problem_texts(run: dict[str, Any], bench: str) -> tuple[str, ...] | None:
    records = run.get("records")
    records = records.get(bench) if isinstance(records, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        return None
    return tuple(sorted(str(r.get("problem")) for r in records))


def _chart_values(run: dict[str, Any], benches: list[str], metric: str) -> list[float | None]:
    """``metric`` of each of ``benches``, then their unweighted mean (None where missing)."""
    values = [run["metrics"][b].get(metric) for b in benches]
    numbers = [v for v in values if isinstance(v, (int, float))]
    average = _mean(numbers) if len(numbers) == len(values) else None
    return [*values, average]


def _draw(
    values: dict[str, list[float | None]], columns: list[str], metric: str, path: Path
) -> Path:
    """One bar per run and column (``values[run]`` in ``columns`` order), written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    width = 0.8 / len(values)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(columns) * (len(values) + 1)), 4.5))
    for i, (name, row) in enumerate(values.items()):
        shown = row[: len(columns)]
        xs = [j + (i - (len(values) - 1) / 2) * width for j in range(len(columns))]
        heights = [100 * v if v is not None else 0.0 for v in shown]
        bars = ax.bar(xs, heights, width, label=name)
        texts = [
            f"{h:.1f}" if v is not None else "n/a" for h, v in zip(heights, shown, strict=True)
        ]
        ax.bar_label(bars, texts, fontsize=7)
    ax.set_xticks(range(len(columns)), columns, rotation=20)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 105)
    ax.legend()
    ax.set_title(f"{metric} per benchmark")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _read_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg}); expected a results.json") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise ValueError(f"{path}: no 'metrics' mapping; expected a results.json of alignlib eval")
    return data


def _default_labels(paths: Sequence[str | Path], runs: Sequence[dict[str, Any]]) -> list[str]:
    labels = [str(r.get("model") or Path(p).parent.name) for p, r in zip(paths, runs, strict=True)]
    if len(set(labels)) < len(labels):  # same model twice: the folders tell the runs apart
        labels = [Path(p).resolve().parent.name for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({i + 1})" for i, label in enumerate(labels)]
    return labels
