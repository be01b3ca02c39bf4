"""The statistics of one online step's rollouts, logged under rollout/ (rewards, each reward's
own mean and spread, correctness, lengths, truncation, episodes and environments) and the
router's own per-prompt metrics, over every round of dynamic sampling."""

from __future__ import annotations

import torch
from torch import Tensor

from alignlib.estimator import RowPlan
from alignlib.rollout.base import Generation
from alignlib.trainer.online_rollout import Rollouts


def rollout_metrics(rollouts: list[Rollouts], plans: list[RowPlan]) -> dict[str, float]:
    """The step's rollout statistics, and the router's own per-prompt metrics averaged over
    every prompt of the step (all rounds of dynamic sampling)."""
    rewards = torch.cat([r.rewards.flatten() for r in rollouts])
    correct = torch.cat([r.correct.flatten().float() for r in rollouts])
    lengths = [len(g.token_ids) for r in rollouts for gens in r.generations for g in gens]
    tokens = sum(r.num_tokens for r in rollouts)
    seconds = sum(r.seconds for r in rollouts)
    generations = [g for r in rollouts for gens in r.generations for g in gens]
    truncated = [g.finish_reason == "length" for g in generations]
    return (
        episode_metrics(generations)
        | {
            "rollout/reward_mean": float(rewards.mean()),
            "rollout/reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "rollout/accuracy": float(correct.mean()),
            "rollout/solved_frac": solved_fraction(rollouts),
            "rollout/response_length": sum(lengths) / max(1, len(lengths)),
            "rollout/truncated_frac": sum(truncated) / max(1, len(truncated)),
            "rollout/tokens_per_s": tokens / max(seconds, 1e-9),
            "time/rollout_s": seconds,
        }
        | router_metrics(plans)
        | reward_part_metrics(rollouts)
        | step_metrics(rollouts)
        | baseline_metrics(rollouts)
    )


def baseline_metrics(rollouts: list[Rollouts]) -> dict[str, float]:
    """The mean reward of the greedy completions (ReMax's baseline: the greedy policy's
    training reward, for free), when they were sampled; nothing otherwise."""
    baselines = [r.baselines for r in rollouts if r.baselines is not None]
    if not baselines:
        return {}
    return {"rollout/greedy_reward_mean": float(torch.cat(baselines).mean())}


def solved_fraction(rollouts: list[Rollouts]) -> float:
    """The share of prompts with at least one correct completion (pass@n of the step's
    samples; what pass@k methods push up while the accuracy, pass@1, may not move)."""
    solved = torch.cat([r.correct.any(-1).float() for r in rollouts])
    return float(solved.mean()) if solved.numel() else 0.0


def step_metrics(rollouts: list[Rollouts]) -> dict[str, float]:
    """Steps per completion that carry a step reward (a PRM's steps, rewarded turns), when
    any completion has them; nothing otherwise."""
    steps = [s for r in rollouts for gens in r.step_rewards for s in gens]
    if not any(s is not None for s in steps):
        return {}
    return {"rollout/steps": sum(len(s or {}) for s in steps) / len(steps)}


def reward_part_metrics(rollouts: list[Rollouts]) -> dict[str, float]:
    """Each reward's own mean and std over the step's completions (TRL's `rewards/<name>`),
    NaN ("no opinion" of a TRL reward) left out."""
    out: dict[str, float] = {}
    for label in rollouts[0].parts if rollouts else {}:
        values = torch.cat([r.parts[label].flatten() for r in rollouts])
        values = values[~values.isnan()]
        if values.numel():
            out[f"rollout/reward/{label}/mean"] = float(values.mean())
            out[f"rollout/reward/{label}/std"] = float(values.std()) if values.numel() > 1 else 0.0
    return out


def episode_metrics(generations: list[Generation]) -> dict[str, float]:
    """Turns per completion, tokens an environment inserted and the turn rewards its steps gave,
    when completions are multi-turn episodes (an environment's loss masks); nothing otherwise."""
    masks = [g.loss_mask for g in generations if g.loss_mask is not None]
    if not masks:
        return {}
    count = len(generations)
    out = {
        "rollout/turns": sum(g.turns for g in generations) / count,
        "rollout/observation_tokens": sum(len(m) - sum(m) for m in masks) / count,
    }
    turn_rewards = [sum(g.turn_rewards) for g in generations if g.turn_rewards is not None]
    if turn_rewards:  # the sum per episode, as the environment gave it (before weighting)
        out["rollout/turn_reward"] = sum(turn_rewards) / count
    return out


def environment_metrics(rollouts: list[Rollouts], field: str) -> dict[str, float]:
    """Reward, accuracy and turns of each environment's rollouts (several environments, each
    row naming its own in ``field``), as `rollout/<name>/...`."""
    by_name: dict[str, list[tuple[float, float, int]]] = {}
    for r in rollouts:
        for row, gens, rewards, correct in zip(
            r.rows, r.generations, r.rewards, r.correct, strict=True
        ):
            seen = by_name.setdefault(str(row.get(field)), [])
            for g, reward, right in zip(gens, rewards.tolist(), correct.tolist(), strict=True):
                seen.append((reward, float(right), g.turns))
    out: dict[str, float] = {}
    for name, values in by_name.items():
        count = len(values)
        out[f"rollout/{name}/reward_mean"] = sum(v[0] for v in values) / count
        out[f"rollout/{name}/accuracy"] = sum(v[1] for v in values) / count
        out[f"rollout/{name}/turns"] = sum(v[2] for v in values) / count
    return out


def router_metrics(plans: list[RowPlan]) -> dict[str, float]:
    values: dict[str, list[Tensor]] = {}
    for plan in plans:
        for key, value in plan.metrics.items():
            values.setdefault(key, []).append(value.flatten().to(torch.float64))
    return {key: float(torch.cat(parts).mean()) for key, parts in values.items()}
