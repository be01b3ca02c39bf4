"""M2PO on stale rollouts (Zheng et al. 2025, "Prosperity before Collapse: How Far Can
Off-Policy RL Reach with Stale Data on LLMs?"), reproduced small on a CPU.

Claim (§3–5): when every update trains on rollouts sampled s updates earlier, GRPO's ε-clip of
π_θ/π_behaviour clips a growing share of tokens and learns less than on-policy training;
dropping the trust region first prospers, then becomes unstable; M2PO's second-moment bound
masks only a few outlier tokens and learns like on-policy training.

Setting, per seed: μ = `tiny:llama` taught one-digit arithmetic by SFT (see _sft_arithmetic.py).
Each method runs K updates from μ's weights. Before update k the present policy samples a
fresh batch (P unseen problems × n answers, T = 1, graded 0/1) into a queue; update k trains on
the batch sampled s updates earlier (the first s from μ: the queue starts with s of μ's
batches), with GRPO's group advantage, token-mean, AdamW and the log-probs of the policy that
sampled the batch as π_old. The fresh batch's reward is the present policy's own, free; every
few updates, greedy accuracy on 64 other unseen problems. Methods: `on_policy` (GRPO, s = 0),
`grpo` (GRPO's clip, ε = 0.2), `no_trust_region` (the unclipped ratio), `m2po` (the preset,
the paper's mask, τ = 0.04) and `m2po_released` (the released code's budgeted clip).

    python examples/m2po_stale.py            # 3 seeds, 16 min on 2 CPU cores
    python examples/m2po_stale.py --quick    # plumbing check, seconds

Writes results.json and m2po_stale.png to --out (default examples/results/m2po_stale).
"""

from __future__ import annotations

import random
import sys
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sft_arithmetic import (
    Problem,
    each_method,
    example_args,
    greedy_scores,
    run_seeds,
    scored_batch,
    window_mean,
    write_claims,
)

from alignlib import algorithms
from alignlib.estimator import Batch, GroupNormalized, OldPolicy, UnifiedEstimator
from alignlib.trainer.logprobs import token_logprobs

METHODS = ("on_policy", "grpo", "no_trust_region", "m2po", "m2po_released")
COLORS = {
    "on_policy": "black",
    "grpo": "tab:red",
    "no_trust_region": "tab:orange",
    "m2po": "tab:blue",
    "m2po_released": "tab:cyan",
}


@dataclass(frozen=True)
class Scale:
    sft_steps: int
    prompts: int
    samples: int
    updates: int
    staleness: int
    every: int
    heldout: int
    lr: float
    seeds: tuple[int, ...]


FULL = Scale(
    sft_steps=200,
    prompts=16,
    samples=8,
    updates=48,
    staleness=16,
    every=8,
    heldout=64,
    lr=3e-4,
    seeds=(0, 1, 2),
)
QUICK = Scale(
    sft_steps=5,
    prompts=2,
    samples=2,
    updates=3,
    staleness=2,
    every=3,
    heldout=4,
    lr=1e-3,
    seeds=(0,),
)


def estimator(method: str) -> UnifiedEstimator:
    if method in ("on_policy", "grpo"):
        return algorithms.get("grpo", aggregation="token-mean")
    if method == "no_trust_region":
        return UnifiedEstimator(
            reference=OldPolicy(clamp=None),
            advantage=GroupNormalized(std=True),
            aggregation="token-mean",
            name="no_trust_region",
        )
    return algorithms.get("m2po", form="released" if method == "m2po_released" else "paper")


def share(metrics: dict[str, torch.Tensor], method: str) -> float:
    """The share of tokens the method's trust region took out of the gradient this update."""
    name = estimator(method).terms[0].name
    for key in ("m2_dropped", "clipfrac"):
        if f"{name}/{key}" in metrics:
            return float(metrics[f"{name}/{key}"])
    return 0.0


def train_method(
    method: str, checkpoint: Path, pool: list[Problem], heldout: list[Problem], scale: Scale
) -> dict[str, list[float]]:
    """K updates from μ's weights, each on the batch sampled ``staleness`` updates earlier."""
    torch.manual_seed(0)
    rng = random.Random(1)  # every method draws the same problems
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    loss_fn = estimator(method)
    optimizer = torch.optim.AdamW(model.parameters(), lr=scale.lr)
    stale = 0 if method == "on_policy" else scale.staleness
    queue = deque(scored_batch(model, tokenizer, pool, scale, rng) for _ in range(stale))
    curve: dict[str, list[float]] = {k: [] for k in ("update", "accuracy", "boxed")}
    curve |= {"reward": [], "masked": []}
    for update in range(scale.updates + 1):
        if update % scale.every == 0 or update == scale.updates:
            model.eval()
            accuracy, boxed = greedy_scores(model, tokenizer, heldout)
            curve["update"].append(update)
            curve["accuracy"].append(accuracy)
            curve["boxed"].append(boxed)
        if update == scale.updates:
            break
        queue.append(scored_batch(model, tokenizer, pool, scale, rng))
        curve["reward"].append(float(queue[-1]["rewards"].mean()))
        data = queue.popleft()
        model.train()
        logp, _ = token_logprobs(model, data["ids"], data["attention"])
        batch = Batch(
            logprobs=logp,
            mask=data["mask"],
            old_logprobs=data["old"],
            rewards=data["rewards"],
            group_ids=data["groups"],
        )
        out = loss_fn(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        curve["masked"].append(share(out.metrics, method))
    return curve


def plot(runs: dict[int, dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for seed, run in runs.items():
        for method in METHODS:
            curve, label = run[method], method if seed == min(runs) else None
            steps = list(range(1, len(curve["reward"]) + 1))
            style = {"color": COLORS[method], "alpha": 0.8, "label": label}
            axes[0].plot(steps, curve["reward"], **style)
            axes[1].plot(curve["update"], curve["accuracy"], **style)
            axes[2].plot(steps, curve["masked"], **style)
    titles = ("present policy's reward", "held-out greedy accuracy", "tokens clipped / masked")
    for axis, title in zip(axes, titles, strict=True):
        axis.set_title(title)
        axis.set_xlabel("update")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    path = out / "m2po_stale.png"
    figure.savefig(path, dpi=110)
    return path


def claims(runs: dict[int, dict[str, Any]]) -> dict[str, bool]:
    """Seed by seed, on the last quarter's reward of the present policy: M2PO at least GRPO's
    (clipped, stale); M2PO within 0.1 of on-policy's; M2PO clips or masks fewer tokens than
    GRPO on average."""
    return {
        "m2po_at_least_grpo": all(
            window_mean(r["m2po"]["reward"]) >= window_mean(r["grpo"]["reward"])
            for r in runs.values()
        ),
        "m2po_near_on_policy": all(
            window_mean(r["m2po"]["reward"]) >= window_mean(r["on_policy"]["reward"]) - 0.1
            for r in runs.values()
        ),
        "m2po_masks_less_than_grpo_clips": all(
            sum(r["m2po"]["masked"]) < sum(r["grpo"]["masked"]) for r in runs.values()
        ),
    }


def main(argv: list[str] | None = None) -> None:
    args = example_args(argv, __doc__, "m2po_stale")
    scale = QUICK if args.quick else FULL
    runs, seconds = run_seeds(
        partial(each_method, methods=METHODS, train_method=train_method), scale
    )
    held = claims(runs)
    summary = {
        str(seed): {
            m: {
                "late_reward": window_mean(run[m]["reward"]),
                "final_accuracy": run[m]["accuracy"][-1],
                "mean_masked": sum(run[m]["masked"]) / len(run[m]["masked"]),
            }
            for m in METHODS
        }
        for seed, run in runs.items()
    }
    path = write_claims(args, scale, runs, seconds, held, summary=summary)
    print(f"{path} and {plot(runs, args.out)} ({seconds:.0f} s)")
    for seed, methods in summary.items():
        print(f"seed {seed}:")
        for method, s in methods.items():
            print(
                f"  {method:<16} late reward {s['late_reward']:.2f}, held-out accuracy "
                f"{s['final_accuracy']:.2f}, clipped/masked {s['mean_masked']:.3f}"
            )
    print(f"claims: {held}")


if __name__ == "__main__":
    main()
