"""BVPO gradient variance (Zhu et al. 2025, "From Noisy Traces to Stable Gradients:
Bias–Variance Optimized Preference Optimization"), measured small on a CPU.

Claim: the mixed gradient α·g_t + (1 − α)·g_e — g_t from DPO on pairs with sampled reasoning
traces, g_e from DPO on the same prompts' empty-trace pairs — has a lower variance across
mini-batches than the trace-only estimator (α = 1), and the paper's closed form
α* = (B − C)/(A + B − 2C) can be computed online from the measured (co)variances.

Setting, per seed: `tiny:llama` is taught one-digit arithmetic by SFT (see _sft_arithmetic.py)
in two response styles, `<think>\\n{trace}\\n</think>\\n\\n\\boxed{v}` with a trace drawn from four
styles of different lengths, and the empty-trace `<think>\\n\\n</think>\\n\\n\\boxed{v}`. At that
model (θ = θ_ref) each mini-batch draws 8 unseen problems; per problem a trace pair (correct
answer with a fresh trace vs a wrong answer with its own fresh trace) and an empty-trace pair.
g_t and g_e are the parameter gradients of `bvpo` with α = 1 and α = 0 (the library's
estimator, through the trainer's tokenization and log-prob code); α* comes from
`alignlib.algorithms.bvpo_auto.GradientMoments`, the statistics `alpha: auto` uses, fed one
mini-batch at a time. The marginal gradient is intractable, so the target is the trace
estimator's mean (b_t = 0, b_e = E g_e − E g_t). Last, a short run with
`algorithm: {name: bvpo, params: {alpha: auto}}` logs the α* it trains with.

    python examples/bvpo_variance.py            # ~4 min on 2 CPU cores (3 seeds)
    python examples/bvpo_variance.py --quick    # plumbing check, ~20 s

Writes results.json, bvpo_variance.png and bvpo_alpha_online.png to --out
(default examples/results/bvpo_variance).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignlib import algorithms
from alignlib.algorithms.bvpo_auto import GradientMoments
from alignlib.data.builtin import EMPTY_THINK
from alignlib.data.collate import collate, encode_example
from alignlib.estimator import Batch
from alignlib.models import load_model_and_tokenizer
from alignlib.trainer.logprobs import token_logprobs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sft_arithmetic import (
    SFT_PROBLEMS,
    Problem,
    offline_config,
    one_thread,
    problems,
    sft_tiny,
    train,
    write_jsonl,
    write_results,
    wrong_value,
)

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
MSE_GRID = tuple(round(x / 20, 2) for x in range(21))
BETA = 0.1


@dataclass(frozen=True)
class Scale:
    sft_steps: int
    minibatches: int
    problems_per_minibatch: int
    auto_steps: int
    seeds: tuple[int, ...]


FULL = Scale(
    sft_steps=200, minibatches=64, problems_per_minibatch=8, auto_steps=20, seeds=(0, 1, 2)
)
QUICK = Scale(sft_steps=10, minibatches=4, problems_per_minibatch=4, auto_steps=3, seeds=(0,))


def trace(p: Problem, value: int, rng: random.Random) -> str:
    """One sampled reasoning trace ending in ``value`` (right or wrong): four styles whose
    lengths differ, counting grows with the operand."""
    style = rng.randrange(4)
    if style == 0:
        return f"{p.a} {p.op} {p.b} = {value}."
    if style == 1:
        verb = "Add" if p.op == "+" else "Take away"
        return f"Start with {p.a}. {verb} {p.b}. That makes {value}."
    if style == 2:
        step = 1 if value >= p.a else -1
        counted = ", ".join(str(n) for n in range(p.a + step, value + step, step)) or str(p.a)
        return f"Counting {'up' if step > 0 else 'down'} from {p.a}: {counted}."
    relation = "more than" if p.op == "+" else "less than"
    return f"{p.b} {relation} {p.a} is {value}."


def with_trace(text: str, value: int) -> str:
    return f"<think>\n{text}\n</think>\n\n\\boxed{{{value}}}"


def empty_trace(value: int) -> str:
    return f"{EMPTY_THINK}\\boxed{{{value}}}"


def sft_rows(rng: random.Random) -> list[dict[str, str]]:
    """Half the SFT answers reason in a sampled trace, half answer with the empty block."""
    rows = []
    for p in problems()[:SFT_PROBLEMS]:
        answer = with_trace(trace(p, p.value, rng), p.value) if rng.random() < 0.5 else None
        rows.append({"prompt": p.prompt, "completion": answer or empty_trace(p.value)})
    return rows


def bvpo_rows(chosen_from: list[Problem], rng: random.Random) -> list[dict[str, Any]]:
    """Per problem a trace pair (each side its own fresh trace) and an empty-trace pair."""
    rows: list[dict[str, Any]] = []
    for p in chosen_from:
        w = wrong_value(p.value, rng)
        chosen, rejected = trace(p, p.value, rng), trace(p, w, rng)
        rows.append(
            {"prompt": p.prompt, "chosen": with_trace(chosen, p.value),
             "rejected": with_trace(rejected, w), "trace": True}
        )  # fmt: skip
    for p in chosen_from:
        w = wrong_value(p.value, rng)
        rows.append(
            {"prompt": p.prompt, "chosen": empty_trace(p.value), "rejected": empty_trace(w),
             "trace": False}
        )  # fmt: skip
    return rows


def side_gradients(model, tokenizer, rows: list[dict[str, Any]]) -> list[dict[Any, torch.Tensor]]:
    """[g_t, g_e], float64 per parameter: ∇ of bvpo with α = 1 and α = 0 on one mini-batch,
    at θ = θ_ref (the reference log-probs are the policy's own, detached)."""
    examples = [encode_example(tokenizer, r, "bvpo", index=i) for i, r in enumerate(rows)]
    col = collate(examples, tokenizer.pad_token_id)
    logprobs, _ = token_logprobs(model, col.input_ids, col.attention_mask)
    batch = Batch(
        logprobs=logprobs,
        mask=col.completion_mask,
        ref_logprobs=logprobs.detach(),
        roles=col.roles,
        pair_ids=col.pair_ids,
        trace=col.trace,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    sides = []
    for alpha in (1.0, 0.0):
        loss = algorithms.get("bvpo", alpha=alpha, beta=BETA)(batch).loss
        grads = torch.autograd.grad(loss, params, retain_graph=alpha == 1.0)
        sides.append({p: g.double() for p, g in zip(params, grads, strict=True)})
    return sides


def measure(model_dir: Path, seed: int, scale: Scale) -> dict[str, Any]:
    """Variance of the mixed estimator per α across mini-batches, and α* online."""
    model, tokenizer = load_model_and_tokenizer(model_dir)
    rng = random.Random(1000 + seed)
    held = problems()[SFT_PROBLEMS:]
    g_t, g_e, online = [], [], []
    moments = GradientMoments(decay=1.0)  # a fixed model: plain averages
    keys = list(range(len(held)))
    for _ in range(scale.minibatches):
        chosen = [held[i] for i in rng.sample(keys, scale.problems_per_minibatch)]
        t, e = side_gradients(model, tokenizer, bvpo_rows(chosen, rng))
        moments.observe(t, e)
        online.append(moments.alpha())
        g_t.append(torch.cat([g.flatten() for g in t.values()]).numpy())
        g_e.append(torch.cat([g.flatten() for g in e.values()]).numpy())
    gt, ge = np.stack(g_t), np.stack(g_e)
    variance = {str(a): float(_total_variance(a * gt + (1 - a) * ge)) for a in ALPHAS}
    a, b, c = moments.abc() or (float("nan"),) * 3
    return {
        "variance": variance,
        "variance_rel_trace_only": {k: v / variance["1.0"] for k, v in variance.items()},
        "A_trace_var": a,
        "B_empty_mse": b,
        "C_cross_cov": c,
        "alpha_star": moments.alpha(),
        "alpha_star_online": online,
        "mse_rel_trace_only": {str(x): _mse(x, a, b, c) / a for x in MSE_GRID},
    }


def _total_variance(samples: np.ndarray) -> float:
    """tr Cov: Σ over coordinates of the unbiased sample variance across mini-batches."""
    return float(samples.var(axis=0, ddof=1).sum())


def _mse(alpha: float, a: float, b: float, c: float) -> float:
    """E‖α·g_t + (1 − α)·g_e − E g_t‖² from A, B, C (the quantity α* minimizes)."""
    return alpha**2 * a + (1 - alpha) ** 2 * b + 2 * alpha * (1 - alpha) * c


def auto_run(work: Path, model_dir: Path, seed: int, scale: Scale) -> dict[str, Any]:
    """A short training run with alpha: auto from the same SFT model: the α* of each step."""
    rng = random.Random(2000 + seed)
    chosen = rng.sample(problems()[SFT_PROBLEMS:], 64)
    data = write_jsonl(work / "bvpo.jsonl", bvpo_rows(chosen, rng))
    algorithm = {"name": "bvpo", "params": {"alpha": "auto", "beta": BETA}}
    config = offline_config(
        work / "auto", str(model_dir), data, algorithm,
        lr=1e-3, steps=scale.auto_steps, batch_size=16, seed=seed,
    )  # fmt: skip
    result, seconds = train(config)
    return {
        "alpha_per_step": [h["bvpo/alpha"] for h in result.history],
        "loss_first_last": [result.history[0]["loss"], result.history[-1]["loss"]],
        "seconds": seconds,
    }


def plot_variance(per_seed: dict[int, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    rel = np.array(
        [[r["variance_rel_trace_only"][str(a)] for a in ALPHAS] for r in per_seed.values()]
    )
    mean = rel.mean(0)
    ax.bar(ALPHAS, mean, width=0.16, color="tab:blue", alpha=0.75,
           label="measured variance across mini-batches")  # fmt: skip
    spread = [mean - rel.min(0), rel.max(0) - mean]
    ax.errorbar(ALPHAS, mean, yerr=spread, fmt="none", ecolor="black", capsize=4,
                label=f"min–max over {len(per_seed)} seeds")  # fmt: skip
    mse = np.array([[r["mse_rel_trace_only"][str(x)] for x in MSE_GRID] for r in per_seed.values()])
    ax.plot(
        MSE_GRID,
        mse.mean(0),
        color="tab:orange",
        label="estimated MSE vs. E[g_t] (variance + bias²)",
    )
    star = float(np.mean([r["alpha_star"] for r in per_seed.values()]))
    ax.axvline(star, color="tab:red", linestyle="--", label=f"α* (online, mean) = {star:.2f}")
    ax.set_xlabel("α  (weight of the trace estimator; 1 = trace only, 0 = empty-trace only)")
    ax.set_ylabel("tr Cov of α·g_t + (1−α)·g_e  ÷  trace-only")
    ax.set_title("Mixing in the empty-trace gradient lowers the variance (BVPO)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_online(per_seed: dict[int, dict[str, Any]], auto: dict[int, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for seed, r in per_seed.items():
        online = r["alpha_star_online"]
        ax.plot(range(1, len(online) + 1), online, label=f"fixed SFT model, seed {seed}")
    for seed, run in auto.items():
        steps = range(1, len(run["alpha_per_step"]) + 1)
        ax.plot(steps, run["alpha_per_step"], "k--", label=f"alpha: auto training run, seed {seed}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mini-batches measured (training run: optimizer step)")
    ax.set_ylabel("α*  (0.5 until two mini-batches are measured)")
    ax.set_title("BVPO's optimal α*, computed online from the measured (co)variances")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("examples/results/bvpo_variance"))
    parser.add_argument("--quick", action="store_true", help="a plumbing check, < 1 min")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    one_thread()
    began = time.perf_counter()
    per_seed, auto = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in scale.seeds:
            work = Path(tmp) / f"seed{seed}"
            model_dir, _ = sft_tiny(work, sft_rows(random.Random(seed)), scale.sft_steps, seed)
            per_seed[seed] = measure(model_dir, seed, scale)
            r = per_seed[seed]
            print(f"seed {seed}: variance / trace-only {r['variance_rel_trace_only']}")
            print(f"seed {seed}: α* {r['alpha_star']:.3f}")
        auto[scale.seeds[0]] = auto_run(Path(tmp) / "auto", model_dir, scale.seeds[0], scale)
    args.out.mkdir(parents=True, exist_ok=True)
    plot_variance(per_seed, args.out / "bvpo_variance.png")
    plot_online(per_seed, auto, args.out / "bvpo_alpha_online.png")
    results = {
        "claim": "α·g_t + (1−α)·g_e has lower variance across mini-batches than g_t alone; "
        "α* = (B − C)/(A + B − 2C) from online moments",
        "setting": {
            "model": "tiny:llama after SFT on builtin arithmetic, trace and empty-trace answers",
            "minibatches": scale.minibatches,
            "problems_per_minibatch": scale.problems_per_minibatch,
            "beta": BETA,
            "target": "E[g_t] (b_t = 0): the marginal gradient is intractable",
            "seeds": list(scale.seeds),
            "quick": args.quick,
        },
        "per_seed": {str(s): r for s, r in per_seed.items()},
        "alpha_auto_run": {str(s): r for s, r in auto.items()},
        "seconds_total": time.perf_counter() - began,
    }
    print(f"wrote {write_results(args.out, results)} and the two PNGs in {args.out}")


if __name__ == "__main__":
    main()
