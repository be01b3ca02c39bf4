"""Process vs outcome supervision (Shao et al. 2024, DeepSeekMath §4.1.3 and §5.2.1), reproduced
small on a CPU.

Claim: with a reward for each step, GRPO's process supervision (each step's reward normalized in
the group, a token credited with its step's and the later steps' rewards) learns faster than
outcome supervision (one reward, their sum, on every token).

Setting, per seed: `tiny:llama` (random) answers each prompt in a three-turn episode (turns of
at most 4 tokens, a short observation between them); each turn is rewarded by the share of
digits it holds, as a turn reward (the environment's `step` returns (observation, reward)).
`grpo` sees their sum per episode on every token, `grpo_process` sees them as steps. Same seed,
prompts, batch (8 prompts × 8 samples, one mini-batch) and learning rate (3e-3) for both; the
logged `rollout/turn_reward` (the episode's summed turn rewards, of 3) is the curve.

    python examples/process_vs_outcome.py            # ~2 min on 2 CPU cores (6 seeds)
    python examples/process_vs_outcome.py --quick    # plumbing check, ~7 s

Writes results.json and process_vs_outcome.png to --out (default
examples/results/process_vs_outcome).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sft_arithmetic import example_args, run_seeds, train, write_jsonl, write_results

from alignlib.config.schema import RunConfig

METHODS = {"outcome (grpo)": "grpo", "process (grpo_process)": "grpo_process"}
COLORS = {"outcome (grpo)": "tab:red", "process (grpo_process)": "tab:blue"}


def digit_share(text: str) -> float:
    """The share of a turn's non-space characters that are digits."""
    chars = [c for c in text if not c.isspace()]
    return sum(c.isdigit() for c in chars) / max(1, len(chars))


class DigitTurns:
    """Three turns, each rewarded on its own by the share of digits it holds."""

    TURNS = 3

    def reset(self, **row: Any) -> str:
        self.turn = 0
        return " [digits]"

    def step(self, turn: str) -> tuple[str | None, float]:
        self.turn += 1
        return (None if self.turn == self.TURNS else " [digits]"), digit_share(turn)


@dataclass(frozen=True)
class Scale:
    steps: int
    seeds: tuple[int, ...]


FULL = Scale(steps=40, seeds=(0, 1, 2, 3, 4, 5))
QUICK = Scale(steps=2, seeds=(0,))


def online_config(work: Path, method: str, steps: int, seed: int) -> RunConfig:
    prompts = [{"prompt": f"Task {i}:"} for i in range(32)]
    return RunConfig.model_validate(
        {
            "output_dir": str(work / method),
            "model": {"name_or_path": "tiny:llama"},
            "data": {"path": str(write_jsonl(work / "prompts.jsonl", prompts))},
            "algorithm": {"name": method},
            "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "schedule": "constant"},
            "train": {"max_steps": steps, "seed": seed},
            "logging": {"progress": False, "report_to": [], "plot": False},
            "rollout": {"n": 8, "max_new_tokens": 32},
            "online": {
                "prompts_per_step": 8,
                "micro_batch_size": 64,
                "rewards": [{"name": "environment"}],
                "environment": {
                    "name": "process_vs_outcome:DigitTurns",
                    "max_turns": 3,
                    "max_turn_tokens": 4,
                },
            },
        }
    )


def run_seed(seed: int, scale: Scale, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, method in METHODS.items():
        result, seconds = train(online_config(work, method, scale.steps, seed))
        curve = [h["rollout/turn_reward"] for h in result.history]
        out[label] = {"turn_reward": curve, "seconds": seconds}
        print(f"seed {seed} {label}: {curve[0]:.2f} -> {curve[-1]:.2f} ({seconds:.0f} s)")
    return out


def summary(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per method: the first and last steps' reward and the area under the curve, per seed."""
    table: dict[str, Any] = {}
    for label in METHODS:
        curves = np.array([runs[s][label]["turn_reward"] for s in runs])
        last = curves[:, -3:].mean(1) if curves.shape[1] >= 3 else curves[:, -1]
        table[label] = {
            "first_per_seed": curves[:, 0].tolist(),
            "last3_mean_per_seed": last.tolist(),
            "last3_mean": float(last.mean()),
            "mean_over_steps_per_seed": curves.mean(1).tolist(),
        }
    return table


def plot(runs: dict[int, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label in METHODS:
        values = np.array([runs[s][label]["turn_reward"] for s in runs])
        steps = np.arange(1, values.shape[1] + 1)
        ax.plot(steps, values.mean(0), color=COLORS[label], label=label)
        ax.fill_between(steps, values.min(0), values.max(0), color=COLORS[label], alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("episode reward (sum of 3 turn rewards)")
    ax.grid(alpha=0.3)
    ax.legend(title=f"mean, band = min–max of {len(runs)} seed{'s' * (len(runs) > 1)}")
    ax.set_title("Three turns, each rewarded: process vs outcome supervision")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = example_args(argv, __doc__, "process_vs_outcome")
    scale = QUICK if args.quick else FULL
    runs, seconds = run_seeds(run_seed, scale)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, args.out / "process_vs_outcome.png")
    results = {
        "claim": "process supervision (grpo_process) learns faster than outcome (grpo)",
        "setting": {
            "model": "tiny:llama, random",
            "environment": "3 turns of at most 4 tokens, each rewarded by its share of digits",
            "batch": "8 prompts x 8 samples, one mini-batch, lr 3e-3 constant",
            "steps": scale.steps,
            "methods": METHODS,
            "seeds": list(scale.seeds),
            "quick": args.quick,
        },
        "summary": summary(runs),
        "per_step": {str(s): runs[s] for s in runs},
        "seconds_total": seconds,
    }
    print(f"wrote {write_results(args.out, results)} and {args.out / 'process_vs_outcome.png'}")


if __name__ == "__main__":
    main()
