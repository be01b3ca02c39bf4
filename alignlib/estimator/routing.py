"""Row routing: how a preset turns P prompts × n scored rollouts into training rows.

A hybrid method decides which rows it trains on before its loss sees them: HPT's gate sends a
prompt with few correct rollouts to SFT (one demonstration row instead of its rollouts), LUFFY
replaces one rollout per group with the demonstration. That choice belongs to the method, not
to the trainer, so a preset carries it as ``UnifiedEstimator.router``; the online trainer only
asks the router for a :class:`RowPlan` and builds the rows it names, whatever the method.

A router is pure tensor math on the [P, n] reward and correctness tables (it never sees
tokens): the trainer looks up the token ids of each planned row itself (rollout ``s`` of prompt
``p``, or the prompt's demonstration when ``s`` is −1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from alignlib.estimator.batch import Role


@dataclass
class RowPlan:
    """The training rows of one rollout batch, in order; the group of a row is its prompt."""

    prompt_index: Tensor
    """[rows] long: the prompt (group) of each row."""
    sample_index: Tensor
    """[rows] long: which rollout of the prompt the row is; −1 for the prompt's demonstration."""
    roles: Tensor
    """[rows] long: Role.SAMPLE for rollouts, Role.DEMO for demonstrations."""
    rewards: Tensor
    """[rows] the row's reward (what group advantages read)."""
    keep: Tensor
    """[P] bool: prompts whose rows carry gradient whatever their rewards (HPT's SFT rows), so
    dynamic sampling keeps them even when every reward in the group is equal."""
    metrics: dict[str, Tensor] = field(default_factory=dict)
    """Per-prompt [P] values the trainer averages over the step's prompts and logs under these
    keys (e.g. HPT's ``hpt/sft_frac``)."""


@runtime_checkable
class Router(Protocol):
    """What the online trainer asks of a preset's data side."""

    needs_demonstrations: bool
    """Rows need a demonstration (``online.demonstration_field``): the trainer checks every row
    before the model loads and tokenizes the demonstrations when the plan asks for them."""
    scores_demonstrations: bool
    """The plan reads ``demo_rewards`` ([P] the demonstrations scored by the run's rewards)."""
    min_samples: int
    """Smallest ``rollout.n`` the router works with."""

    def route(self, rewards: Tensor, correct: Tensor, demo_rewards: Tensor | None) -> RowPlan:
        """``rewards`` [P, n], ``correct`` [P, n] bool, ``demo_rewards`` [P] or None → rows."""
        ...


@dataclass(frozen=True)
class AllRollouts:
    """No routing: the n rollouts of every prompt, as SAMPLE rows of its group."""

    needs_demonstrations: bool = False
    scores_demonstrations: bool = False
    min_samples: int = 1

    def route(self, rewards: Tensor, correct: Tensor, demo_rewards: Tensor | None) -> RowPlan:
        return plan_rows(rewards, [list(range(rewards.shape[1]))] * rewards.shape[0])


def plan_rows(
    rewards: Tensor,
    samples: list[list[int]],
    demo_rewards: Tensor | None = None,
    keep: Tensor | None = None,
) -> RowPlan:
    """A plan from the rollout indices of each prompt (−1: its demonstration, role DEMO, reward
    ``demo_rewards[p]`` or 0)."""
    prompt_index, sample_index, row_rewards = [], [], []
    for p, chosen in enumerate(samples):
        for s in chosen:
            prompt_index.append(p)
            sample_index.append(s)
            if s >= 0:
                row_rewards.append(float(rewards[p, s]))
            else:
                row_rewards.append(0.0 if demo_rewards is None else float(demo_rewards[p]))
    samples_t = torch.tensor(sample_index, dtype=torch.long)
    roles = torch.where(samples_t < 0, int(Role.DEMO), int(Role.SAMPLE))
    return RowPlan(
        prompt_index=torch.tensor(prompt_index, dtype=torch.long),
        sample_index=samples_t,
        roles=roles,
        rewards=torch.tensor(row_rewards, dtype=rewards.dtype),
        keep=torch.zeros(len(samples), dtype=torch.bool) if keep is None else keep,
    )
