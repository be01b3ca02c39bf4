"""TOPR off-policy (Le Roux, Bellemare et al. 2025, "Tapered Off-Policy REINFORCE"), reproduced
small on a CPU.

Claim (§3, Prop. 3.2): trained off-policy on a fixed set of sampled answers with rewards ±1,
plain REINFORCE pushes the wrong answers' likelihood down without bound, and the policy
degrades; TOPR — REINFORCE on the right answers, the truncated importance weight
clip(π/μ, 0, 1) of the whole sequence on the wrong ones — stops pushing once a wrong answer
has become unlikely, so its objective stays bounded and the policy keeps its answers.

Setting, per seed: `tiny:llama` is taught one-digit arithmetic by SFT (see _sft_arithmetic.py)
to be μ. μ samples 8 answers (T = 1) to each of 32 problems SFT never saw, graded ±1 against
the true value: a fixed data set, never resampled. From μ's weights, each method then trains
full-batch for many epochs over that set (AdamW, one update per epoch), so every update after
the first is off-policy; μ's log-probs are computed once. Every few epochs: greedy accuracy and
the share of well-formed (boxed) answers on 64 other unseen problems, and the mean summed
log-likelihood the policy gives the set's right and wrong answers. Methods: `reinforce`
(Â = R, no importance weight), `topr` (the preset: the paper's sequence ratio) and
`positives_only` (TOPR with the wrong answers' weight 0: SFT on the right answers, i.e.
rejection-sampling fine-tuning).

    python examples/topr_off_policy.py            # 3 seeds, 6.5 min on 2 CPU cores
    python examples/topr_off_policy.py --quick    # plumbing check, ~20 s

Writes results.json and topr_off_policy.png to --out (default examples/results/topr_off_policy).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sft_arithmetic import (
    Problem,
    example_args,
    greedy_scores,
    run_seeds,
    sampled_answers,
    taught_policy,
    write_claims,
)

from alignlib import algorithms
from alignlib.estimator import Batch, FixedBaseline, UnifiedEstimator
from alignlib.trainer.logprobs import token_logprobs

METHODS = ("reinforce", "topr", "positives_only")
COLORS = {"reinforce": "tab:red", "topr": "tab:blue", "positives_only": "tab:gray"}


@dataclass(frozen=True)
class Scale:
    sft_steps: int
    prompts: int
    samples: int
    epochs: int
    every: int
    heldout: int
    lr: float
    seeds: tuple[int, ...]


FULL = Scale(
    sft_steps=200, prompts=32, samples=8, epochs=40, every=5, heldout=64, lr=1e-3, seeds=(0, 1, 2)
)
QUICK = Scale(sft_steps=5, prompts=4, samples=2, epochs=2, every=1, heldout=4, lr=1e-3, seeds=(0,))


def estimator(method: str) -> UnifiedEstimator:
    if method == "reinforce":  # the same loss as TOPR without any importance weight
        return UnifiedEstimator(
            reference="current",
            advantage=FixedBaseline(),
            aggregation="seq-mean-token-sum",
            name="reinforce",
        )
    if method == "positives_only":
        return algorithms.get("topr", negative_weight=0.0)
    return algorithms.get("topr")


def off_policy_set(
    model: Any, tokenizer: Any, chosen: list[Problem], scale: Scale, seed: int
) -> dict[str, torch.Tensor]:
    """μ's answers to ``chosen`` (``scale.samples`` each, T = 1), graded ±1, with μ's log-probs."""
    data = sampled_answers(model, tokenizer, chosen, scale.samples, seed)
    with torch.no_grad():
        behaviour, _ = token_logprobs(model, data["ids"], data["attention"])
    rewards = torch.tensor([1.0 if r else -1.0 for r in data["right"]])
    return {**data, "old": behaviour, "rewards": rewards}


def train_method(
    method: str,
    checkpoint: Path,
    data: dict[str, torch.Tensor],
    heldout: list[Problem],
    scale: Scale,
) -> dict[str, list[float]]:
    """Full-batch epochs over the fixed set from μ's weights; the curves every ``scale.every``."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    loss_fn = estimator(method)
    optimizer = torch.optim.AdamW(model.parameters(), lr=scale.lr)
    right = data["rewards"] > 0
    curve: dict[str, list[float]] = {
        k: [] for k in ("epoch", "accuracy", "boxed", "right_logp", "wrong_logp")
    }
    for epoch in range(scale.epochs + 1):
        if epoch % scale.every == 0 or epoch == scale.epochs:
            model.eval()
            accuracy, boxed = greedy_scores(model, tokenizer, heldout)
            with torch.no_grad():
                logp, _ = token_logprobs(model, data["ids"], data["attention"])
            summed = (logp * data["mask"]).sum(-1)
            curve["epoch"].append(epoch)
            curve["accuracy"].append(accuracy)
            curve["boxed"].append(boxed)
            curve["right_logp"].append(float(summed[right].mean()) if right.any() else 0.0)
            curve["wrong_logp"].append(float(summed[~right].mean()) if (~right).any() else 0.0)
        if epoch == scale.epochs:
            break
        model.train()
        logp, _ = token_logprobs(model, data["ids"], data["attention"])
        batch = Batch(
            logprobs=logp,
            mask=data["mask"],
            old_logprobs=data["old"],
            rewards=data["rewards"],
        )
        out = loss_fn(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    return curve


def run_seed(seed: int, scale: Scale, work: Path) -> dict[str, Any]:
    checkpoint, unseen_by_sft, rng = taught_policy(work, scale.sft_steps, seed)
    unseen = rng.sample(unseen_by_sft, scale.prompts + scale.heldout)
    chosen, heldout = unseen[: scale.prompts], unseen[scale.prompts :]
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    data = off_policy_set(model, tokenizer, chosen, scale, seed)
    positives = float((data["rewards"] > 0).float().mean())
    curves = {m: train_method(m, checkpoint, data, heldout, scale) for m in METHODS}
    return {"right_fraction": positives, "curves": curves}


def plot(runs: dict[int, dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("accuracy", "held-out greedy accuracy"),
        ("wrong_logp", "wrong answers' log-lik. (nats)"),
        ("right_logp", "right answers' log-lik. (nats)"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(13, 3.6))
    for axis, (key, title) in zip(axes, panels, strict=True):
        for seed, run in runs.items():
            for method in METHODS:
                curve = run["curves"][method]
                label = method if seed == min(runs) else None
                axis.plot(curve["epoch"], curve[key], color=COLORS[method], alpha=0.8, label=label)
        axis.set_title(title)
        axis.set_xlabel("epoch over the fixed set")
    axes[0].legend()
    figure.tight_layout()
    path = out / "topr_off_policy.png"
    figure.savefig(path, dpi=110)
    return path


BOUNDED = -50.0
"""Nats: the wrong answers' summed log-likelihood that TOPR's stays above at the end (μ gives
them −2 to −6), while REINFORCE's runs past −100."""


def claims(runs: dict[int, dict[str, Any]]) -> dict[str, bool]:
    """The claim, seed by seed: REINFORCE's wrong answers fall without bound (below −100 nats)
    and its accuracy ends below its start; TOPR's stay above ``BOUNDED`` and its accuracy ends
    within 0.1 of its start."""
    curves = [run["curves"] for run in runs.values()]
    return {
        "reinforce_unbounded": all(c["reinforce"]["wrong_logp"][-1] < -100 for c in curves),
        "reinforce_degrades": all(
            c["reinforce"]["accuracy"][-1] < c["reinforce"]["accuracy"][0] for c in curves
        ),
        "topr_bounded": all(c["topr"]["wrong_logp"][-1] > BOUNDED for c in curves),
        "topr_keeps_accuracy": all(
            c["topr"]["accuracy"][-1] >= c["topr"]["accuracy"][0] - 0.1 for c in curves
        ),
    }


def main(argv: list[str] | None = None) -> None:
    args = example_args(argv, __doc__, "topr_off_policy")
    scale = QUICK if args.quick else FULL
    runs, seconds = run_seeds(run_seed, scale)
    held = claims(runs)
    path = write_claims(args, scale, runs, seconds, held)
    print(f"{path} and {plot(runs, args.out)} ({seconds:.0f} s)")
    for seed, run in runs.items():
        print(f"seed {seed}: {run['right_fraction']:.2f} of the set right")
        for method in METHODS:
            c = run["curves"][method]
            print(
                f"  {method:<15} accuracy {c['accuracy'][0]:.2f} → {c['accuracy'][-1]:.2f} "
                f"(max {max(c['accuracy']):.2f}), boxed {c['boxed'][-1]:.2f}, wrong log-lik "
                f"{c['wrong_logp'][0]:.1f} → {c['wrong_logp'][-1]:.1f}, right "
                f"{c['right_logp'][0]:.1f} → {c['right_logp'][-1]:.1f}"
            )
    print(f"claims: {held}")


if __name__ == "__main__":
    main()
