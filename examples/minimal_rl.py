"""RAFT++ and Reinforce-Rej against GRPO and plain Reinforce (Xiong et al. 2025, "A Minimalist
Approach to LLM Reasoning: from Rejection Sampling to Reinforce"), reproduced small on a CPU.

Claims (§3–4): RAFT++, which trains only on the right answers, learns as fast as GRPO early on,
and its entropy falls faster (no negatives to keep exploring); plain Reinforce on ±1 rewards
is hurt by the prompts whose answers are all wrong, which Reinforce-Rej drops (with the
all-right ones), reaching GRPO's reward with a smaller KL from the starting policy.

Setting, per seed: μ = `tiny:llama` taught one-digit arithmetic by SFT (see _sft_arithmetic.py).
Each method runs K updates from μ's weights, on-policy: before each update the present policy
samples a fresh batch (P unseen problems × n answers, T = 1, graded ±1), which trains in two
mini-batches of P/2 problems (so the second sees π_θ ≠ π_old) with AdamW, and the KL to μ
(k3, 0.001) as the paper's scripts. Logged per update, on the fresh batch: its reward, the
mean −log π of its tokens (an entropy estimate) and the mean log π − log μ of its tokens (the
KL from the start); every few updates, greedy accuracy on 64 other unseen problems. Methods:
`grpo`, `reinforce` (R itself, PPO's clip, nothing filtered), `reinforce_rej` and `raft_pp`
(the presets, the papers' forms).

    python examples/minimal_rl.py            # 3 seeds, ~9 min on 2 CPU cores
    python examples/minimal_rl.py --quick    # plumbing check, seconds

Writes results.json and minimal_rl.png to --out (default examples/results/minimal_rl).
"""

from __future__ import annotations

import copy
import random
import sys
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
from alignlib.estimator import Batch, FixedBaseline, KLPenalty, PPOClip, UnifiedEstimator
from alignlib.trainer.logprobs import token_logprobs

METHODS = ("grpo", "reinforce", "reinforce_rej", "raft_pp")
COLORS = {"grpo": "black", "reinforce": "tab:orange", "reinforce_rej": "tab:blue"}
COLORS["raft_pp"] = "tab:green"
KL_COEF = 0.001


@dataclass(frozen=True)
class Scale:
    sft_steps: int
    prompts: int
    samples: int
    updates: int
    every: int
    heldout: int
    lr: float
    seeds: tuple[int, ...]


FULL = Scale(
    sft_steps=200, prompts=16, samples=8, updates=40, every=8, heldout=64, lr=3e-4, seeds=(0, 1, 2)
)
QUICK = Scale(sft_steps=5, prompts=2, samples=2, updates=3, every=3, heldout=4, lr=1e-3, seeds=(0,))


def estimator(method: str) -> UnifiedEstimator:
    if method == "grpo":
        return algorithms.get("grpo", kl_coef=KL_COEF)
    if method == "reinforce":  # the paper's Reinforce: Reinforce-Rej without its filter
        return UnifiedEstimator(
            mask=PPOClip(),
            reference="old",
            advantage=FixedBaseline(),
            aggregation="seq-mean-token-mean",
            regularizers=[KLPenalty(coef=KL_COEF, aggregation="seq-mean-token-mean")],
            name="reinforce",
        )
    return algorithms.get(method, kl_coef=KL_COEF)


def token_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float((values * mask).sum() / mask.sum())


def update(model: Any, optimizer: Any, loss_fn: UnifiedEstimator, data: dict, halves: int) -> None:
    """One optimizer step per mini-batch of whole groups, π_old the sampling policy."""
    groups = data["groups"]
    for part in torch.arange(int(groups.max()) + 1).chunk(halves):
        rows = torch.isin(groups, part)
        model.train()
        logp, _ = token_logprobs(model, data["ids"][rows], data["attention"][rows])
        batch = Batch(
            logprobs=logp,
            mask=data["mask"][rows],
            old_logprobs=data["old"][rows],
            ref_logprobs=data["ref"][rows],
            rewards=data["rewards"][rows],
            group_ids=groups[rows],
        )
        optimizer.zero_grad()
        loss_fn(batch).loss.backward()
        optimizer.step()


def train_method(
    method: str, checkpoint: Path, pool: list[Problem], heldout: list[Problem], scale: Scale
) -> dict[str, list[float]]:
    """K on-policy updates from μ's weights; the fresh batch's reward, entropy and KL to μ."""
    torch.manual_seed(0)
    rng = random.Random(1)  # every method draws the same problems
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    start = copy.deepcopy(model).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    loss_fn = estimator(method)
    optimizer = torch.optim.AdamW(model.parameters(), lr=scale.lr)
    curve: dict[str, list[float]] = {k: [] for k in ("update", "accuracy", "reward")}
    curve |= {"entropy": [], "kl": [], "all_wrong": []}
    for step in range(scale.updates + 1):
        if step % scale.every == 0 or step == scale.updates:
            model.eval()
            curve["update"].append(step)
            curve["accuracy"].append(greedy_scores(model, tokenizer, heldout)[0])
        if step == scale.updates:
            break
        data = scored_batch(model, tokenizer, pool, scale, rng, wrong=-1.0, reference=start)
        mask = data["mask"]
        curve["reward"].append(float((data["rewards"] > 0).float().mean()))
        curve["entropy"].append(token_mean(-data["old"], mask))
        curve["kl"].append(token_mean(data["old"] - data["ref"], mask))
        solved = torch.zeros(scale.prompts).index_add(
            0, data["groups"], (data["rewards"] > 0) * 1.0
        )
        curve["all_wrong"].append(float((solved == 0).float().mean()))
        update(model, optimizer, loss_fn, data, halves=2)
    return curve


def plot(runs: dict[int, dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for seed, run in runs.items():
        for method in METHODS:
            curve, label = run[method], method if seed == min(runs) else None
            steps = list(range(1, len(curve["reward"]) + 1))
            style = {"color": COLORS[method], "alpha": 0.8, "label": label}
            axes[0].plot(steps, curve["reward"], **style)
            axes[1].plot(curve["update"], curve["accuracy"], **style)
            axes[2].plot(steps, curve["entropy"], **style)
            axes[3].plot(steps, curve["kl"], **style)
    titles = ("fresh batch: share right", "held-out greedy accuracy", "−log π per token", "KL to μ")
    for axis, title in zip(axes, titles, strict=True):
        axis.set_title(title)
        axis.set_xlabel("update")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    path = out / "minimal_rl.png"
    figure.savefig(path, dpi=110)
    return path


def claims(runs: dict[int, dict[str, Any]]) -> dict[str, bool]:
    """Seed by seed: RAFT++'s first-quarter reward at least GRPO's; RAFT++'s last-quarter
    entropy below GRPO's; Reinforce-Rej's last-quarter reward at least Reinforce's and within
    0.1 of GRPO's; Reinforce-Rej's last-quarter KL to μ below GRPO's."""

    def every(test: Any) -> bool:
        return all(test(r) for r in runs.values())

    return {
        "raft_early_as_grpo": every(
            lambda r: (
                window_mean(r["raft_pp"]["reward"], "early")
                >= window_mean(r["grpo"]["reward"], "early")
            )
        ),
        "raft_entropy_below_grpo": every(
            lambda r: (
                window_mean(r["raft_pp"]["entropy"], "late")
                < window_mean(r["grpo"]["entropy"], "late")
            )
        ),
        "rej_at_least_reinforce": every(
            lambda r: (
                window_mean(r["reinforce_rej"]["reward"], "late")
                >= window_mean(r["reinforce"]["reward"], "late")
            )
        ),
        "rej_near_grpo": every(
            lambda r: (
                window_mean(r["reinforce_rej"]["reward"], "late")
                >= window_mean(r["grpo"]["reward"], "late") - 0.1
            )
        ),
        "rej_kl_below_grpo": every(
            lambda r: (
                window_mean(r["reinforce_rej"]["kl"], "late") < window_mean(r["grpo"]["kl"], "late")
            )
        ),
    }


def summarize(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {
        m: {
            "early_reward": window_mean(run[m]["reward"], "early"),
            "late_reward": window_mean(run[m]["reward"], "late"),
            "final_accuracy": run[m]["accuracy"][-1],
            "late_entropy": window_mean(run[m]["entropy"], "late"),
            "late_kl": window_mean(run[m]["kl"], "late"),
        }
        for m in METHODS
    }


def main(argv: list[str] | None = None) -> None:
    args = example_args(argv, __doc__, "minimal_rl")
    scale = QUICK if args.quick else FULL
    runs, seconds = run_seeds(
        partial(each_method, methods=METHODS, train_method=train_method), scale
    )
    held = claims(runs)
    summary = {str(seed): summarize(run) for seed, run in runs.items()}
    path = write_claims(args, scale, runs, seconds, held, summary=summary)
    print(f"{path} and {plot(runs, args.out)} ({seconds:.0f} s)")
    for seed, methods in summary.items():
        print(f"seed {seed}:")
        for method, s in methods.items():
            print(
                f"  {method:<14} reward early {s['early_reward']:.2f} late "
                f"{s['late_reward']:.2f}, accuracy {s['final_accuracy']:.2f}, entropy "
                f"{s['late_entropy']:.3f}, KL {s['late_kl']:.4f}"
            )
    print(f"claims: {held}")


if __name__ == "__main__":
    main()
