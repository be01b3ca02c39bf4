"""GiGPO's two-level group advantage (Feng et al. 2025, "Group-in-Group Policy Optimization for
LLM Agent Training", arXiv 2505.10978; verl-agent ``compute_gigpo_outcome_advantage``).

An agent's episode is a row of several model turns (steps) with an environment's observations
between them (``Generation.loss_mask``). Besides the episode's group advantage (eq. 3, GRPO's
over the N episodes of one task), every step gets a step-level one (eq. 7): the steps of the
task's episodes that acted from the same environment state (the *anchor state*: the same
observation) form a group, and a step's discounted return from there, G_t = Σ_{k≥t} γ^{k−t} r_k,
is compared with the others of its group. A token of step t gets Â = A^E + ω·A^S (eq. 8).

Where the steps sit: ``batch.step_states`` holds, on the last sampled token of each turn, the id
of the state the turn acted from (the trainer hashes the observation before the turn, or the
episode's own prompt for turn 1), −1 elsewhere. A step's reward r_t is what sits on its tokens
(an environment's turn rewards, ``batch.step_rewards``), and the reward no step carries (an
episode's get_reward(), a verifier's outcome) belongs to the last step, as process-supervised
GRPO places them. Without ``step_states`` each row is one step from its prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from alignlib.estimator.advantages import ADVANTAGES, Advantage, AdvantageResult
from alignlib.estimator.batch import Batch
from alignlib.estimator.critic import last_token_ends, token_rewards
from alignlib.estimator.registry import check_choice, check_number
from alignlib.estimator.units import Likelihood


@dataclass(frozen=True)
class Steps:
    """[R, M] per row's step (turn) j < M: its reward, its anchor state id and whether it
    exists; and [R, T] each token's step index (M − 1 off the row's tokens, never read)."""

    rewards: Tensor
    states: Tensor
    present: Tensor
    of_token: Tensor


def steps_of(batch: Batch, valid: Tensor, rewards: Tensor) -> Steps:
    """The rows' steps: they end at the marked state positions and at each row's last valid
    token; a step's reward is the sum of the placed rewards on its tokens."""
    present = valid > 0
    ends = last_token_ends(valid)
    states = torch.zeros(valid.shape, dtype=torch.long, device=valid.device)
    if batch.step_states is not None:
        marked = (batch.step_states >= 0) & present
        ends = ends | marked
        states = batch.step_states.long().where(marked, states)
    # A token's step: the steps that ended strictly before it.
    of_token = ends.long().cumsum(-1) - ends.long()
    count = int(ends.sum(-1).max()) if ends.any() else 1
    of_token = of_token.clamp(max=count - 1)
    placed = token_rewards(rewards, valid, turns=batch.step_rewards) * present
    step_rewards = placed.new_zeros(valid.shape[0], count).scatter_add(-1, of_token, placed)
    step_states = states.new_zeros(valid.shape[0], count).scatter_add(-1, of_token, states * ends)
    exists = torch.arange(count, device=valid.device) < ends.sum(-1, keepdim=True)
    return Steps(step_rewards, step_states, exists, of_token)


def discounted(rewards: Tensor, present: Tensor, gamma: float) -> Tensor:
    """[R, M] G_j = Σ_{k≥j} γ^{k−j} r_k over each row's steps."""
    out = torch.zeros_like(rewards)
    running = rewards.new_zeros(rewards.shape[0])
    for j in reversed(range(rewards.shape[1])):
        running = (rewards[:, j] + gamma * running) * present[:, j].to(rewards.dtype)
        out[:, j] = running
    return out


def normalized(
    values: Tensor, keys: Tensor, weight: Tensor, std: bool, eps: float
) -> tuple[Tensor, Tensor]:
    """(values − the weighted mean of their key's group (÷ (unbiased std + ε) with ``std``) for
    the entries of positive weight, 0 for the others; each entry's group weight, the group's
    size when weights are 0/1). ``keys``: [N, k] rows of group keys."""
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    groups = int(inverse.max()) + 1 if inverse.numel() else 0
    zeros = values.new_zeros(groups)
    count = zeros.index_add(0, inverse, weight)
    mean = zeros.index_add(0, inverse, values * weight) / count.clamp(min=1e-12)
    centered = (values - mean[inverse]) * (weight > 0).to(values.dtype)
    if not std:
        return centered, count[inverse]
    # The std over entries, an entry counted as often as its weight (verl-agent's cross-step
    # statistics count an episode once per step).
    squares = zeros.index_add(0, inverse, centered**2 * weight)
    spread = (squares / (count - 1).clamp(min=1)).sqrt()
    return centered / (spread[inverse] + eps), count[inverse]


@ADVANTAGES.register("gigpo")
@dataclass(frozen=True)
class AnchorStateAdvantage(Advantage):
    """Â_{i,t} = A^E_i + ω·A^S_{i,step(t)}: the episode's reward against its group's, plus the
    step's discounted return against those of the group's steps from the same anchor state."""

    needs: ClassVar[dict[str, str]] = {
        "rewards": "the episode advantage compares each episode's reward within its group",
        "group_ids": "episode and step groups are taken within the group of each task",
    }
    reads_steps: ClassVar[bool] = True
    metric_weights: ClassVar[Literal["pair", "summed", "unit"]] = "unit"
    gamma: float = 0.95
    """γ of the step returns (the paper's and verl-agent's scripts')."""
    step_weight: float = 1.0
    """ω, the step advantage's weight (``step_advantage_w``)."""
    std: bool = True
    """Divide both advantages by their group's unbiased std + ε (verl-agent's
    ``mean_std_norm``, its ALFWorld script's; False: ``mean_norm``, only the mean)."""
    episode_stats: Literal["episodes", "steps"] = "episodes"
    """Over what the episode group's mean and std run: its episodes, each once (eq. 3), or its
    steps, an episode counted once per step it took (verl-agent's default,
    ``compute_mean_std_cross_steps``: there each step is a row)."""
    eps: float = 1e-6

    def __post_init__(self) -> None:
        owner = "AnchorStateAdvantage"
        check_number(owner, "gamma", self.gamma, ge=0, le=1, why="a discount")
        check_number(owner, "step_weight", self.step_weight, ge=0)
        check_choice(owner, "episode_stats", self.episode_stats, ("episodes", "steps"))
        check_number(owner, "eps", self.eps, ge=0)

    def min_group_rows(self) -> int:
        return 2

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        assert batch.rewards is not None and batch.group_ids is not None
        dtype = batch.logprobs.dtype
        valid = batch.mask * rows.to(batch.mask.dtype).unsqueeze(-1)
        rewards = batch.rewards.to(dtype)
        steps = steps_of(batch, valid, rewards)
        trained = rows & valid.any(-1)
        episode_weight = trained.to(dtype)
        if self.episode_stats == "steps":
            episode_weight = episode_weight * steps.present.sum(-1).to(dtype)
        group = batch.group_ids.long().unsqueeze(-1)
        episode, _ = normalized(rewards, group, episode_weight, self.std, self.eps)
        returns = discounted(steps.rewards, steps.present, self.gamma)
        width = steps.rewards.shape[1]
        keys = torch.stack([group.expand(-1, width), steps.states], -1).reshape(-1, 2)
        weight = (steps.present & trained.unsqueeze(-1)).reshape(-1).to(dtype)
        step, sizes = normalized(returns.reshape(-1), keys, weight, self.std, self.eps)
        step = step.reshape(returns.shape)
        per_token = episode.unsqueeze(-1) + self.step_weight * step.gather(-1, steps.of_token)
        # How many steps share each token's anchor state (1: its A^S is 0, GRPO's credit):
        # logged as the mean over trained tokens, ``step_group_size``.
        shared = sizes.reshape(returns.shape).gather(-1, steps.of_token) * valid.to(dtype)
        return AdvantageResult(
            per_token * valid.to(dtype), row_metrics={"step_group_size": shared.sum(-1)}
        )
