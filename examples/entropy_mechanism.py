"""Entropy mechanism (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for
Reasoning Language Models"), reproduced small on a CPU.

Claim: under GRPO the policy's entropy collapses while the reward saturates, and the pairs
(entropy H, reward R) of the run follow R = −a·e^H + b; Clip-Cov (drop the gradient of a few
high-covariance tokens) and KL-Cov (a KL penalty on the top-covariance tokens) keep the entropy
higher at an equal or better final reward.

Setting: SmolLM2-135M-Instruct (bundled, LoRA) on one-step arithmetic word problems; the reward
is `math` (1 for the right `\\boxed{}` answer) plus 0.5·`format` (any boxed answer), because the
untrained model boxes ~10% of its answers and is right in almost none: the format term gives
GRPO a signal from the first steps. The three runs share everything (seed, prompts, lr 1e-3,
four optimizer mini-batches per rollout batch, so the policy moves between them and the
covariance masks act) except the policy loss; by default all three also share GRPO's clip
(ε = 0.2), so Clip-Cov and KL-Cov differ from GRPO only by their intervention on ~5% of the
tokens. `--paper-clip` runs them as the paper does (Clip-Cov's clip widened to ε = 1, KL-Cov
without one). Entropy is `rollout/entropy`: the policy's mean per-token entropy (float32) on
its own samples at each step.

    python examples/entropy_mechanism.py               # 19 min measured (docs/results.md)
    python examples/entropy_mechanism.py --paper-clip  # the paper's clip widths, 18 min measured
    python examples/entropy_mechanism.py --quick       # plumbing check, seconds (tiny model)

Writes results.json, entropy_reward.png and entropy_fit.png to --out (default
examples/results/entropy_mechanism, or entropy_mechanism_paper_clip with --paper-clip).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _arithmetic_runs import (
    SMOLLM,
    Scale,
    arithmetic_config,
    saved_figure,
    series,
    train,
    write_results,
)

FULL = Scale(SMOLLM, steps=16, prompts_per_step=8, n=4, max_new_tokens=20)
QUICK = Scale("tiny:llama", steps=2, prompts_per_step=4, n=2, max_new_tokens=6)

# The paper's ratios (Clip-Cov 2e-4, KL-Cov 2e-3) are fractions of millions of tokens per
# mini-batch; here a mini-batch holds ~160, where both would touch one token (k = max(1, ⌊rN⌋)).
# 5% (~8 tokens) keeps the idea, acting on the heavy tail of the covariance, at this size.
RATIO = 0.05
GRPO_CLIP = {"eps_low": 0.2, "eps_high": 0.2}
# The default comparison: GRPO's clip (ε = 0.2) in all three, so the only difference is the
# covariance intervention. Clip-Cov drops k tokens' gradient after that clip; KL-Cov adds its
# β·|log π − log π_old| on the top-k tokens to the clipped loss (built from components, as the
# preset has no clip), with GRPO's advantages and a token mean as the preset.
SHARED_CLIP: dict[str, dict[str, Any]] = {
    "grpo": {"name": "grpo"},
    "clip_cov": {"name": "clip_cov", "params": {"ratio": RATIO, **GRPO_CLIP}},
    "kl_cov": {
        "name": None,
        "components": {
            "mask": [
                {"name": "ppo_clip", "params": GRPO_CLIP},
                {"name": "kl_cov", "params": {"ratio": RATIO, "coef": 1.0}},
            ],
            "reference": "old",
            "advantage": "grpo",
            "aggregation": "token-mean",
        },
    },
}
# --paper-clip: the presets as the paper ran them, Clip-Cov with the clip widened to ε = 1 and
# KL-Cov with none (at lr 1e-3 the unclipped updates destabilize: see docs/results.md).
PAPER_CLIP: dict[str, dict[str, Any]] = {
    "grpo": {"name": "grpo"},
    "clip_cov": {"name": "clip_cov", "params": {"ratio": RATIO}},
    "kl_cov": {"name": "kl_cov", "params": {"ratio": RATIO, "coef": 1.0}},
}
LABELS = {"grpo": "GRPO", "clip_cov": "Clip-Cov", "kl_cov": "KL-Cov"}
COLORS = {"grpo": "tab:red", "clip_cov": "tab:blue", "kl_cov": "tab:green"}
REWARDS = [{"name": "math"}, {"name": "format", "weight": 0.5}]
# Four optimizer steps per rollout batch at lr 1e-3: the policy moves between mini-batches (so
# the clip, Clip-Cov and KL-Cov act) and far enough in 16 steps for the entropy to collapse.
MINI_BATCHES, LR = 4, 1e-3


def fit_entropy_law(entropy: list[float], reward: list[float]) -> dict[str, float | None]:
    """Least-squares fit of R = −a·exp(H) + b (linear in exp(H)); R² against the mean of R
    (None when R is constant, where R² is undefined)."""
    x, y = np.exp(np.asarray(entropy, dtype=np.float64)), np.asarray(reward, dtype=np.float64)
    design = np.stack([-x, np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = float(np.sum((y - design @ np.array([a, b])) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - residual / total if total > 0 else None
    return {"a": float(a), "b": float(b), "r2": r2, "points": len(y)}


def run_method(
    name: str, algorithm: dict[str, Any], scale: Scale, seed: int, folder: Path
) -> dict[str, Any]:
    """One run of ``algorithm``: per-step entropy and reward, the final values, wall time."""
    config = arithmetic_config(
        folder / name,
        scale,
        algorithm,
        seed,
        optim={"lr": LR},
        online={"mini_batches": MINI_BATCHES, "rewards": REWARDS},
    )
    run = train(config)
    entropy = series(run.history, "rollout/entropy")
    reward = series(run.history, "rollout/reward_mean")
    accuracy = series(run.history, "rollout/accuracy")
    print(
        f"{name}: {run.seconds:.0f} s, final reward {reward['value'][-1]:.3f}, "
        f"entropy {entropy['value'][-1]:.3f}",
        flush=True,
    )
    return {
        "algorithm": algorithm,
        "entropy": entropy,
        "reward": reward,
        "accuracy": accuracy,
        "final_entropy": entropy["value"][-1],
        "final_reward": reward["value"][-1],
        # The last steps' mean: one step's reward over 32 samples is noisy.
        "final_reward_last3": float(np.mean(reward["value"][-3:])),
        "final_entropy_last3": float(np.mean(entropy["value"][-3:])),
        "seconds": run.seconds,
    }


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """Entropy and reward per step, one line per method (two panels, one x axis)."""
    with saved_figure(path, 2, 1, figsize=(7, 6.5), sharex=True) as (fig, (top, bottom)):
        for name, run in results["methods"].items():
            style = {"color": COLORS[name], "label": LABELS[name], "marker": ".", "lw": 1.6}
            top.plot(run["entropy"]["step"], run["entropy"]["value"], **style)
            bottom.plot(run["reward"]["step"], run["reward"]["value"], **style)
        top.set_ylabel("policy entropy (nats / token)")
        bottom.set_ylabel("mean reward (math + 0.5·format)")
        bottom.set_xlabel("training step")
        top.legend()
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
        fig.suptitle(headline(results))


def headline(results: dict[str, Any]) -> str:
    """The curves figure's title: what this run's last three steps show (two lines)."""
    higher, reward_ok = results["entropy_higher_than_grpo"], results["reward_at_least_grpo"]
    names = {"clip_cov": "Clip-Cov", "kl_cov": "KL-Cov"}

    def who(flags: dict[str, bool], value: bool) -> str:
        return " and ".join(names[m] for m, flag in flags.items() if flag == value)

    if all(higher.values()):
        entropy = "Clip-Cov and KL-Cov keep it higher"
    elif any(higher.values()):
        entropy = f"{who(higher, True)} keeps it higher"
    else:
        entropy = "neither Clip-Cov nor KL-Cov keeps it higher"
    if all(reward_ok.values()):
        reward = "both reach GRPO's final reward or more"
    elif any(reward_ok.values()):
        reward = f"{who(reward_ok, True)} reaches GRPO's final reward, {who(reward_ok, False)} not"
    else:
        reward = "both end below GRPO's final reward"
    return f"GRPO's entropy collapses; {entropy}\n{reward} (mean of the last 3 steps)"


def plot_fit(results: dict[str, Any], path: Path) -> None:
    """GRPO's (entropy, reward) per step and the fitted R = −a·e^H + b."""
    grpo = results["methods"]["grpo"]
    h, r = np.asarray(grpo["entropy"]["value"]), np.asarray(grpo["reward"]["value"])
    with saved_figure(path, figsize=(6.5, 5)) as (fig, ax):
        points = ax.scatter(h, r, c=grpo["entropy"]["step"], cmap="viridis", zorder=3)
        fig.colorbar(points, ax=ax, label="training step")
        grid = np.linspace(h.min(), h.max(), 100)
        for which, style, label in (
            ("fit", "-", "all steps"),
            ("fit_from_first_reward", "--", "from the first reward"),
        ):
            a, b, r2 = (results[which][k] for k in ("a", "b", "r2"))
            r2_text = "undefined" if r2 is None else f"{r2:.2f}"
            ax.plot(
                grid,
                -a * np.exp(grid) + b,
                color="black",
                ls=style,
                label=f"{label}: R = −{a:.3f}·e^H + {b:.3f}, R² = {r2_text}",
            )
        ax.set_xlabel("policy entropy H (nats / token)")
        ax.set_ylabel("mean reward R")
        ax.set_title("GRPO: reward is bought with entropy, R = −a·e^H + b")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8.5, frameon=False)
        ax.grid(alpha=0.3)


def summarize(methods: dict[str, Any], setting: dict[str, Any]) -> dict[str, Any]:
    """results.json: the runs, GRPO's entropy-law fits and the claim's checks (each on the mean
    of the last three steps: one step's reward over 32 samples is noisy)."""
    grpo = methods["grpo"]
    entropy, reward = grpo["entropy"]["value"], grpo["reward"]["value"]
    # Before the first rewarded sample every advantage is 0: no gradient, so those steps' entropy
    # is the untrained policy's, not a point on the trade-off.
    first = next((i for i, r in enumerate(reward) if r > 0), 0)
    others = ("clip_cov", "kl_cov")
    higher = {m: methods[m]["final_entropy_last3"] > grpo["final_entropy_last3"] for m in others}
    reward_ok = {m: methods[m]["final_reward_last3"] >= grpo["final_reward_last3"] for m in others}
    return {
        "claim": "GRPO entropy collapses as reward saturates, R = -a*exp(H) + b; Clip-Cov and "
        "KL-Cov keep entropy higher at equal or better final reward",
        "setting": setting,
        "methods": methods,
        "fit": fit_entropy_law(entropy, reward),
        "fit_from_first_reward": fit_entropy_law(entropy[first:], reward[first:])
        | {"first_step": grpo["reward"]["step"][first]},
        "entropy_higher_than_grpo": higher,
        "reward_at_least_grpo": reward_ok,
        "claim_holds": all(higher.values()) and all(reward_ok.values()),
        "total_seconds": sum(m["seconds"] for m in methods.values()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="default examples/results/entropy_mechanism")
    parser.add_argument("--quick", action="store_true", help="tiny random model, 2 steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--paper-clip",
        action="store_true",
        help="Clip-Cov with ε = 1 and KL-Cov unclipped, as in the paper (default: GRPO's clip in "
        "all three); default --out examples/results/entropy_mechanism_paper_clip",
    )
    parser.add_argument(
        "--replot", action="store_true", help="no training: refit and redraw OUT/results.json"
    )
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    name = "entropy_mechanism" + ("_paper_clip" if args.paper_clip else "")
    out = args.out or Path(__file__).parent / "results" / name
    if args.replot:
        before = json.loads((out / "results.json").read_text())
        methods, setting = before["methods"], before["setting"]
    else:
        algorithms = PAPER_CLIP if args.paper_clip else SHARED_CLIP
        with tempfile.TemporaryDirectory() as runs:
            methods = {
                method: run_method(method, algorithm, scale, args.seed, Path(runs))
                for method, algorithm in algorithms.items()
            }
        clip = "paper (Clip-Cov eps 1, KL-Cov none)" if args.paper_clip else "GRPO's eps 0.2"
        setting = {
            "scale": vars(scale),
            "clip": clip,
            "seed": args.seed,
            "rewards": REWARDS,
            "mini_batches": MINI_BATCHES,
            "lr": LR,
            "lora_r": 16,
        }
    results = summarize(methods, setting)
    write_results(out, results)
    plot_curves(results, out / "entropy_reward.png")
    if all(math.isfinite(v) for v in methods["grpo"]["entropy"]["value"]):
        plot_fit(results, out / "entropy_fit.png")
    fit = results["fit"]
    print(f"fit: a = {fit['a']:.4f}, b = {fit['b']:.4f}, R² = {fit['r2']}; wrote {out}")
    return results


if __name__ == "__main__":
    main()
