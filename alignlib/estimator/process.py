"""Process-supervised GRPO's advantage (Shao et al. 2024, DeepSeekMath §4.1.3).

Each completion i is cut into steps with rewards r_i^(j) on their last tokens index(j) (a
process reward model's step scores, a multi-turn environment's turn rewards:
``batch.step_rewards`` at ``batch.step_ends``). All step rewards of a group are normalized
together, r̃ = (r − mean_group) / (std_group + ε), and a token's advantage is the sum of the
normalized rewards of its own step and the steps after it: Â_{i,t} = Σ_{index(j) ≥ t} r̃_i^(j).

The part of a row's reward no step carries (R − Σ_j r^(j): a verifier's outcome, an episode's
get_reward()) belongs to its last step, which always ends on the row's last token. A row with
no step rewards is then one step holding R, so with none anywhere this is outcome GRPO,
(R − mean_group) / (std_group + ε) on every token, as the paper's outcome supervision is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from alignlib.estimator.advantages import ADVANTAGES, Advantage, AdvantageResult
from alignlib.estimator.batch import Batch
from alignlib.estimator.critic import last_token_ends, token_rewards
from alignlib.estimator.registry import check_number
from alignlib.estimator.units import Likelihood


@ADVANTAGES.register("grpo_process")
@dataclass(frozen=True)
class ProcessGroupNormalized(Advantage):
    """Â_{i,t} = Σ_{index(j) ≥ t} (r_i^(j) − mean_group(r)) / (std_group(r) + ε), over the
    group's step rewards; a group of one row gets 0 (as ``grpo``)."""

    needs: ClassVar[dict[str, str]] = {
        "rewards": "process supervision puts the reward no step carries on the last step",
        "group_ids": "step rewards are normalized within the group of each prompt",
    }
    reads_steps: ClassVar[bool] = True
    std: bool = True
    """Divide by the group's unbiased standard deviation of its step rewards (False: only
    subtract the mean, Dr. GRPO's choice)."""
    eps: float = 1e-6

    def __post_init__(self) -> None:
        check_number("ProcessGroupNormalized", "eps", self.eps, ge=0)

    def min_group_rows(self) -> int:
        return 2

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        assert batch.rewards is not None and batch.group_ids is not None
        dtype = batch.logprobs.dtype
        valid = batch.mask * rows.to(batch.mask.dtype).unsqueeze(-1)
        placed = token_rewards(batch.rewards.to(dtype), valid, turns=batch.step_rewards)
        ends = self.step_ends(batch, valid)
        normalized = self.normalize(placed, ends, batch.group_ids, rows)
        # Σ over the steps ending at or after t: a reverse cumulative sum along the row.
        advantages = normalized.flip(-1).cumsum(-1).flip(-1)
        return AdvantageResult(advantages * valid.to(dtype))

    @staticmethod
    def step_ends(batch: Batch, valid: Tensor) -> Tensor:
        """[R, T] bool: the given step ends on valid tokens, and every row's last valid token
        (its last step's end)."""
        ends = last_token_ends(valid)
        if batch.step_ends is not None:
            ends = ends | (batch.step_ends > 0)
        return ends & (valid > 0)

    def normalize(self, placed: Tensor, ends: Tensor, group_ids: Tensor, rows: Tensor) -> Tensor:
        """[R, T] r̃ at the step ends, 0 elsewhere; 0 for a group of one row."""
        dtype = placed.dtype
        _, inverse = torch.unique(group_ids, return_inverse=True)
        groups = int(inverse.max()) + 1 if inverse.numel() else 0
        weight = ends.to(dtype) * rows.to(dtype).unsqueeze(-1)
        zeros = placed.new_zeros(groups)
        count = zeros.index_add(0, inverse, weight.sum(-1))
        members = zeros.index_add(0, inverse, rows.to(dtype))
        mean = zeros.index_add(0, inverse, (placed * weight).sum(-1)) / count.clamp(min=1)
        centered = (placed - mean[inverse].unsqueeze(-1)) * weight
        squares = zeros.index_add(0, inverse, (centered**2).sum(-1))
        std = (squares / (count - 1).clamp(min=1)).sqrt()
        out = centered / (std[inverse].unsqueeze(-1) + self.eps) if self.std else centered
        return out * (members[inverse] > 1).to(dtype).unsqueeze(-1)
