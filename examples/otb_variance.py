"""The optimal token baseline's variance claim (Li et al. 2026, "Optimal Token Baseline",
arXiv 2602.07078), measured small on a CPU.

Claim: the policy gradient with OTB's per-token baseline — the group's returns weighted by each
answer's realized energy so far, W_k = Σ_{t ≤ k} (1 − 2π(y_t) + Σ_v π(v)²) — has a lower variance
than with the group mean (GRPO's baseline without the std, Dr. GRPO's), which is lower than with
no baseline at all.

Setting, per seed: `tiny:llama` is taught one-digit arithmetic by SFT (200 steps, see
_sft_arithmetic.py); at T = 1 it answers 5 to 28 % right. On 16 problems SFT never saw, it samples
8 answers each (T = 1), graded 1 / 0, many times over (each a fresh seed): a batch of 128
answers per draw. For every draw and every baseline the on-policy REINFORCE gradient
−(1/B) Σ_i Σ_t Â_i,t ∇log π(y_i,t) over all of the model's weights is taken at the same
weights; across draws, its total variance E‖g − ḡ‖² and the distance of its mean from the
no-baseline mean (a baseline that depends on the row itself is not exactly unbiased) are
reported. Baselines: `none` (Â = R), `group_mean` (Â = R − mean of the group) and `otb`
(`algorithms.get("otb")`'s advantage, π and Σπ² from the same weights).

    python examples/otb_variance.py            # 3 seeds, 4.5 min on 2 CPU cores
    python examples/otb_variance.py --quick    # plumbing check, seconds

Writes results.json and otb_variance.png to --out (default examples/results/otb_variance).
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
    example_args,
    run_seeds,
    sampled_answers,
    taught_policy,
    write_results,
)

from alignlib.estimator import (
    Advantage,
    Batch,
    FixedBaseline,
    GroupNormalized,
    OptimalTokenBaseline,
    UnifiedEstimator,
)

BASELINES: dict[str, Advantage] = {
    "none": FixedBaseline(),
    "group_mean": GroupNormalized(std=False),
    "otb": OptimalTokenBaseline(),
}
COLORS = {"none": "tab:gray", "group_mean": "tab:red", "otb": "tab:blue"}


@dataclass(frozen=True)
class Scale:
    sft_steps: int
    prompts: int
    samples: int
    draws: int
    seeds: tuple[int, ...]


FULL = Scale(sft_steps=200, prompts=16, samples=8, draws=48, seeds=(0, 1, 2))
QUICK = Scale(sft_steps=5, prompts=2, samples=2, draws=2, seeds=(0,))


def draw(
    model: Any, tokenizer: Any, chosen: list[Any], scale: Scale, seed: int
) -> dict[str, torch.Tensor]:
    """One batch: ``scale.samples`` answers to each problem, graded 1 / 0, right-padded."""
    data = sampled_answers(model, tokenizer, chosen, scale.samples, seed)
    return {**data, "rewards": torch.tensor([float(r) for r in data["right"]])}


def gradients(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The flattened REINFORCE gradient of every baseline at the model's weights."""
    logits = model(input_ids=batch["ids"], attention_mask=batch["attention"]).logits[:, :-1]
    log_probs = torch.log_softmax(logits.float(), -1)
    logp = torch.zeros(batch["mask"].shape)
    logp[:, 1:] = log_probs.gather(-1, batch["ids"][:, 1:, None])[..., 0]
    squares = torch.zeros(batch["mask"].shape)
    squares[:, 1:] = torch.logsumexp(2 * log_probs.detach(), -1)
    out = {}
    params = [p for p in model.parameters() if p.requires_grad]
    for name, advantage in BASELINES.items():
        estimator = UnifiedEstimator(
            reference="current", advantage=advantage, aggregation="seq-mean-token-sum", name=name
        )
        fields = Batch(
            logprobs=logp,
            mask=batch["mask"],
            old_logprobs=logp.detach(),
            old_log_sum_sq_probs=squares,
            rewards=batch["rewards"],
            group_ids=batch["groups"],
        )
        grads = torch.autograd.grad(estimator(fields).loss, params, retain_graph=True)
        out[name] = torch.cat([g.flatten() for g in grads])
    return out


def run_seed(seed: int, scale: Scale, work: Path) -> dict[str, Any]:
    checkpoint, unseen_by_sft, rng = taught_policy(work, scale.sft_steps, seed)
    chosen = rng.sample(unseen_by_sft, scale.prompts)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    samples: dict[str, list[torch.Tensor]] = {name: [] for name in BASELINES}
    right = []
    for d in range(scale.draws):
        batch = draw(model, tokenizer, chosen, scale, seed * 10_000 + d)
        right.append(float(batch["rewards"].mean()))
        for name, g in gradients(model, batch).items():
            samples[name].append(g)
    stats: dict[str, Any] = {"right_fraction": sum(right) / len(right)}
    reference = torch.stack(samples["none"]).mean(0)
    for name, grads in samples.items():
        stacked = torch.stack(grads)
        mean = stacked.mean(0)
        variance = float(((stacked - mean) ** 2).sum(-1).mean())
        stats[name] = {
            "variance": variance,
            "mean_norm": float(mean.norm()),
            "distance_from_none": float((mean - reference).norm()),
        }
    none = stats["none"]["variance"]  # 0 only when no draw had a right answer (--quick)
    for name in BASELINES:
        stats[name]["variance_rel_none"] = stats[name]["variance"] / max(none, 1e-30)
    return stats


def plot(runs: dict[int, dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.6))
    width = 0.25
    seeds = sorted(runs)
    for k, name in enumerate(BASELINES):
        values = [runs[s][name]["variance_rel_none"] for s in seeds]
        axis.bar(
            [s + (k - 1) * width for s in range(len(seeds))],
            values,
            width,
            label=name,
            color=COLORS[name],
        )
    axis.set_xticks(range(len(seeds)), [f"seed {s}" for s in seeds])
    axis.set_ylabel("gradient variance / no baseline's")
    axis.legend()
    figure.tight_layout()
    path = out / "otb_variance.png"
    figure.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> None:
    args = example_args(argv, __doc__, "otb_variance")
    scale = QUICK if args.quick else FULL
    runs, seconds = run_seeds(run_seed, scale)
    lower = all(r["otb"]["variance"] < r["group_mean"]["variance"] for r in runs.values())
    results = {
        "setting": {"quick": args.quick, "scale": scale.__dict__},
        "seconds": seconds,
        "claim_holds": lower,
        "runs": runs,
    }
    path = write_results(args.out, results)
    print(f"{path} and {plot(runs, args.out)} ({seconds:.0f} s)")
    for seed, run in runs.items():
        parts = ", ".join(
            f"{name} {run[name]['variance_rel_none']:.3f} "
            f"(bias {run[name]['distance_from_none']:.3g})"
            for name in BASELINES
        )
        print(f"seed {seed}: {run['right_fraction']:.2f} right; variance / none's: {parts}")
    print(f"OTB below the group mean on every seed: {lower}")


if __name__ == "__main__":
    main()
