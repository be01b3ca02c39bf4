"""HPT (Lv et al. 2025, "Towards a Unified View of LLM Post-Training"): per prompt, sample n
rollouts and count the correct ones P; if P ≤ γ the prompt becomes ONE SFT row (its
demonstration), else its n rollouts are RL rows. The gate decides roles; the loss is then

    code form:  Σ_RL(−Â·ρ)/L_max + β_sft·mean_SFT(−log p) − c_H·mean_all(H),  Â = R − mean
    paper form: GRPO (PPO clip, std-normalized) on RL rows + mean_SFT(−log p)

Unlike the released code, the SFT and entropy means are taken over the whole mini-batch (not
per micro-batch per GPU), so the loss does not depend on how the batch is split.

The gate is the preset's data side: both presets carry :class:`HptGate` as their router, so the
online trainer builds HPT's rows without knowing the method (``gamma`` is a preset parameter;
the older ``online.hpt_gamma`` still sets it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from alignlib.algorithms.registry import preset
from alignlib.estimator import (
    NLL,
    EntropyBonus,
    GroupNormalized,
    PPOClip,
    Role,
    RowPlan,
    Rows,
    SeqMeanTokenSumNorm,
    UnifiedEstimator,
    plan_rows,
)
from alignlib.estimator.registry import ParameterError

SAMPLES = Rows.of(Role.SAMPLE)
DEMOS = Rows.of(Role.DEMO)


@dataclass
class Routing:
    """The training rows HPT builds from P prompts × n rollouts."""

    sft_prompts: Tensor
    """[P] bool: prompts routed to SFT (#correct ≤ γ)."""
    prompt_index: Tensor
    """[rows] the prompt of each training row (its group id)."""
    sample_index: Tensor
    """[rows] which rollout the row is, −1 for a demonstration row."""
    roles: Tensor
    """[rows] Role.SAMPLE for rollouts, Role.DEMO for demonstrations."""
    rewards: Tensor
    """[rows] the rollout's reward (0 for demonstration rows, which no advantage reads)."""


def gate(num_correct: Tensor, gamma: int = 0) -> Tensor:
    """[P] bool: True where the prompt goes to SFT (#correct ≤ γ; γ = 0 Qwen, 2 Llama-3.1-8B)."""
    return num_correct <= gamma


def route(rewards: Tensor, gamma: int = 0, success_threshold: float = 0.5) -> Routing:
    """Route a [P, n] reward table into training rows: one DEMO row per gated prompt, the n
    rollouts as SAMPLE rows otherwise (in prompt order)."""
    num_prompts, n = rewards.shape
    sft = gate((rewards > success_threshold).sum(-1), gamma)
    prompt_index, sample_index = [], []
    for p in range(num_prompts):
        if bool(sft[p]):
            prompt_index.append(torch.tensor([p]))
            sample_index.append(torch.tensor([-1]))
        else:
            prompt_index.append(torch.full((n,), p))
            sample_index.append(torch.arange(n))
    prompts = torch.cat(prompt_index)
    samples = torch.cat(sample_index)
    is_demo = samples < 0
    roles = torch.where(is_demo, int(Role.DEMO), int(Role.SAMPLE))
    row_rewards = torch.where(is_demo, 0.0, rewards[prompts, samples.clamp(min=0)].float())
    return Routing(sft, prompts, samples, roles, row_rewards.to(rewards.dtype))


@dataclass(frozen=True)
class HptGate:
    """HPT's router: a prompt with ≤ γ correct rollouts becomes ONE demonstration row (role
    DEMO, its rollouts dropped); the others keep their n rollouts as SAMPLE rows."""

    gamma: int = 0
    """#correct at or below which a prompt goes to SFT (0 for Qwen, 2 for Llama-3.1-8B)."""
    needs_demonstrations: bool = field(default=True, init=False)
    scores_demonstrations: bool = field(default=False, init=False)
    min_samples: int = field(default=1, init=False)

    def route(self, rewards: Tensor, correct: Tensor, demo_rewards: Tensor | None) -> RowPlan:
        """SFT rows carry gradient whatever the rewards (dynamic sampling keeps them); logs
        ``hpt/sft_frac``, the share of prompts routed to SFT."""
        routing = route(correct.to(torch.float64), gamma=self.gamma)
        samples: list[list[int]] = [[] for _ in range(rewards.shape[0])]
        for p, s in zip(routing.prompt_index.tolist(), routing.sample_index.tolist(), strict=True):
            samples[p].append(s)
        plan = plan_rows(rewards, samples, keep=routing.sft_prompts)
        plan.metrics["hpt/sft_frac"] = routing.sft_prompts.to(torch.float64)
        return plan


def _check_gamma(gamma: int) -> HptGate:
    if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 0:
        raise ParameterError("hpt", "gamma", f"must be a whole number >= 0, got {gamma!r}")
    return HptGate(gamma)


@preset("hpt")
def hpt(
    sft_coef: float = 1.0,
    entropy_coef: float = 0.001,
    max_response_length: float = 8192,
    gamma: int = 0,
) -> UnifiedEstimator:
    """Released-code form (the one behind the paper's tables): no clip, no std, Σ/L_max with
    L_max = 8192; β_sft = 1.0 for 7B (0.3 for 1.5B); entropy bonus 0.001 over all rows; the gate
    γ = 0 (SWITCH_GATE, Qwen)."""
    rl = UnifiedEstimator(
        reference="old",
        advantage=GroupNormalized(std=False),
        aggregation=SeqMeanTokenSumNorm(constant=max_response_length),
        rows=SAMPLES,
        name="rl",
    )
    sft = NLL(coef=sft_coef, rows=DEMOS, normalization="token_mean_batch", name="sft")
    terms = [*rl.terms, sft]
    if entropy_coef:
        terms.append(EntropyBonus(coef=entropy_coef))
    return UnifiedEstimator(terms=terms, router=_check_gamma(gamma))


@preset("hpt_paper")
def hpt_paper(eps: float = 0.2, sft_coef: float = 1.0, gamma: int = 0) -> UnifiedEstimator:
    """Paper form (Eqs. 11-13): GRPO with PPO clip and std normalization on RL rows, per-sequence
    token mean, plus the token-mean NLL of demonstration rows; the same gate as ``hpt``."""
    rl = UnifiedEstimator(
        mask=PPOClip(eps_low=eps, eps_high=eps),
        reference="old",
        advantage=GroupNormalized(std=True),
        aggregation="seq-mean-token-mean",
        rows=SAMPLES,
        name="rl",
    )
    sft = NLL(coef=sft_coef, rows=DEMOS, normalization="token_mean_batch", name="sft")
    return UnifiedEstimator(terms=[*rl.terms, sft], router=_check_gamma(gamma))
