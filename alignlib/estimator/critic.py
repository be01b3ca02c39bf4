"""A learned critic: GAE advantages from its values, and the clipped value loss that trains it.

PPO as RLHF runs it (Ouyang et al. 2022; verl's ``gae`` estimator, OpenRLHF's default) scores
each completion token with a value model V(s_t), s_t the prompt and the tokens before t. The
reward is per token: the sequence's reward R on its last token, minus β · (log π_old − log π_ref)
on every token when the KL penalty sits in the reward (k1, as verl's ``use_kl_in_reward`` and
OpenRLHF's ``init_kl_coef``). A multi-turn environment's turn rewards (``batch.step_rewards``,
part of R) stay on the last token of their turn, and the last token gets the rest of R, so
each turn's reward is credited to the tokens before it. Then, over each row's completion
tokens in order (tokens outside the mask, e.g. a tool's output inside an episode, are skipped
and carry the recursion through, as verl's multi-turn GAE does):

    δ_t = r_t + γ V_{t+1} − V_t          (V after the last token: 0)
    A_t = δ_t + γλ A_{t+1}                returns_t = A_t + V_t

The policy trains on A whitened over the rollout batch's tokens (verl's ``masked_whiten``: the
unbiased variance, (A − mean) · rsqrt(var + 1e-8)); the critic regresses on the returns with
PPO's clipped value loss,

    ½ · max((V_θ − G)², (V_old + clip(V_θ − V_old, −ε_v, ε_v) − G)²),   token-mean,

its own model and optimizer. Everything here is tensor math; the trainer runs the critic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from alignlib.estimator.advantages import ADVANTAGES, Advantage, AdvantageResult, whiten
from alignlib.estimator.aggregation import Aggregation, TokenMean
from alignlib.estimator.batch import ALL_ROWS, Batch, Rows
from alignlib.estimator.registry import check_number
from alignlib.estimator.term import Term, TermOutput, masked_weights, take_aggregation_name
from alignlib.estimator.units import Likelihood


def last_token_ends(valid: Tensor) -> Tensor:
    """[R, T] bool: each row's last valid token (none in a row without one), where its last
    step ends and the reward no step carries sits."""
    present = valid > 0
    columns = torch.arange(valid.shape[1], device=valid.device)
    last = (present * columns).argmax(-1, keepdim=True)
    return torch.zeros_like(present).scatter(-1, last, present.any(-1, keepdim=True))


def token_rewards(
    rewards: Tensor,
    mask: Tensor,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    turns: Tensor | None = None,
) -> Tensor:
    """[R, T] per-token rewards: each row's reward on its last masked token, minus
    ``kl_coef`` · ``kl`` on every masked token (``kl``: [R, T] log π_old − log π_ref). With
    ``turns`` ([R, T] the turn rewards a multi-turn environment gave, part of ``rewards``),
    each stays on its own token and the last token gets the rest of the reward, so a row's
    rewards still sum to its reward."""
    valid = mask > 0
    columns = torch.arange(mask.shape[1], device=mask.device)
    last = (valid * columns).argmax(-1)  # a row without tokens gets no reward anywhere
    rows = torch.arange(mask.shape[0], device=mask.device)
    out = torch.zeros(mask.shape, dtype=rewards.dtype, device=mask.device)
    rest = rewards
    if turns is not None:
        out = turns.to(out.dtype) * valid.to(out.dtype)
        rest = rewards - out.sum(-1)
    out[rows, last] += rest * valid.any(-1).to(rewards.dtype)
    if kl is not None and kl_coef:
        out = out - kl_coef * kl.to(out.dtype) * valid.to(out.dtype)
    return out


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """(advantages, returns), each [R, T] and 0 off the mask, by the backward recursion over
    each row's masked tokens (unmasked columns are passed over, carrying V_{t+1} and A_{t+1})."""
    valid = mask.to(values.dtype)
    next_value = values.new_zeros(values.shape[0])
    next_advantage = values.new_zeros(values.shape[0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        m = valid[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        here = delta + gamma * lam * next_advantage
        advantages[:, t] = here * m
        next_value = values[:, t] * m + next_value * (1 - m)
        next_advantage = here * m + next_advantage * (1 - m)
    return advantages, (advantages + values) * valid


@ADVANTAGES.register("gae")
@dataclass(frozen=True)
class GAE(Advantage):
    """Generalized advantage estimation from a critic's values (``batch.values``, V_old of
    each completion token), whitened over the batch's tokens (online: the rollout batch's)."""

    needs: ClassVar[dict[str, str]] = {
        "rewards": "GAE puts each row's reward on its last token",
        "values": "GAE reads the critic's value of every completion token (a critic is trained "
        "beside the policy)",
    }
    metric_weights: ClassVar[Literal["pair", "summed", "unit"]] = "unit"
    gamma: float = 1.0
    """Discount per token (1: RLHF's undiscounted episode)."""
    lam: float = 0.95
    """GAE's λ: 1 is the Monte-Carlo return minus V, 0 the one-step TD error."""
    kl_coef: float = 0.0
    """β of the KL penalty in the reward, −β (log π_old − log π_ref) per token; 0: none."""
    whiten: bool = True
    """Whiten the advantages over the valid tokens of the batch, online the whole rollout
    batch (verl's ``compute_advantage``, OpenRLHF's replay buffer)."""

    def __post_init__(self) -> None:
        check_number("GAE", "gamma", self.gamma, ge=0, le=1)
        check_number("GAE", "lam", self.lam, ge=0, le=1)
        check_number("GAE", "kl_coef", self.kl_coef, ge=0, why="a negative β rewards drift")

    def requirements(self) -> dict[str, str]:
        needs = dict(self.needs)
        if self.kl_coef:
            why = "GAE's KL penalty in the reward compares π_old with the reference policy"
            needs |= {"old_logprobs": why, "ref_logprobs": why}
        return needs

    def returns(self, batch: Batch, rows: Tensor) -> Tensor | None:
        """[R, T] the critic's regression targets A + V (before whitening), 0 off the rows."""
        return self._gae(batch, rows)[1]

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        advantages, _ = self._gae(batch, rows)
        valid = batch.mask * rows.to(batch.mask.dtype).unsqueeze(-1)
        whitened = whiten(advantages, valid, unbiased=True) if self.whiten else advantages
        result = AdvantageResult(whitened)
        kl = self._kl(batch)
        if kl is not None:  # `reward_kl`: the mean k1 the reward's penalty charges per token
            result.row_metrics["reward_kl"] = (kl.to(valid.dtype) * valid).sum(-1)
        return result

    def _kl(self, batch: Batch) -> Tensor | None:
        """[R, T] log π_old − log π_ref when the reward carries the KL penalty."""
        if not self.kl_coef:
            return None
        assert batch.old_logprobs is not None and batch.ref_logprobs is not None
        return (batch.old_logprobs - batch.ref_logprobs).detach()

    def _gae(self, batch: Batch, rows: Tensor) -> tuple[Tensor, Tensor]:
        assert batch.rewards is not None and batch.values is not None
        dtype = batch.logprobs.dtype
        valid = batch.mask * rows.to(batch.mask.dtype).unsqueeze(-1)
        rewards = token_rewards(
            batch.rewards.to(dtype), valid, self._kl(batch), self.kl_coef, batch.step_rewards
        )
        return gae(rewards, batch.values.detach().to(dtype), valid, self.gamma, self.lam)


@dataclass(frozen=True)
class ValueLoss(Term):
    """The critic's loss: PPO's clipped value loss against ``batch.returns``; ``batch.logprobs``
    holds the critic's live values V_θ (the kernel's unit for a value model), ``batch.values``
    the values V_old the advantages were computed from."""

    clip: float | None = 0.2
    """ε_v: V_θ may move this far from V_old before the clipped branch takes over (TRL's and
    OpenRLHF's 0.2; verl's default is 0.5); None: the plain squared error."""
    coef: float = 1.0
    rows: Rows = ALL_ROWS
    aggregation: Aggregation = field(default_factory=TokenMean)
    name: str = "critic"

    def __post_init__(self) -> None:
        take_aggregation_name(self)
        check_number("ValueLoss", "clip", self.clip, gt=0, optional=True)
        check_number("ValueLoss", "coef", self.coef, gt=0)

    def requirements(self) -> dict[str, str]:
        return {
            "values": "the clipped value loss keeps V_θ near the values of the rollout (V_old)",
            "returns": "the value loss regresses on the GAE returns",
        }

    def prepare(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        assert batch.values is not None and batch.returns is not None
        weights, mask = masked_weights(batch, self.rows, self.aggregation)
        valid = mask > 0
        returns, old = batch.returns[valid], batch.values[valid]
        explained = 1 - (returns - old).var() / returns.var().clamp(min=1e-12)
        metrics = {"explained_variance": explained.detach()} if returns.numel() > 1 else {}
        return {"w": weights}, metrics

    def forward(self, batch: Batch, prepared: dict[str, Tensor]) -> TermOutput:
        assert batch.values is not None and batch.returns is not None
        _, mask = masked_weights(batch, self.rows, self.aggregation)
        values, old, returns = batch.logprobs, batch.values.detach(), batch.returns.detach()
        plain = (values - returns) ** 2
        if self.clip is None:
            per_token, clipped_more = plain, torch.zeros_like(plain)
        else:
            clipped = old + (values - old).clamp(-self.clip, self.clip)
            squared = (clipped - returns) ** 2
            per_token, clipped_more = torch.maximum(plain, squared), (squared > plain)
        weights = prepared["w"].unsqueeze(-1) * mask

        def mean(x: Tensor) -> Tensor:
            return (weights * x.where(mask > 0, x.new_zeros(()))).sum()

        loss = self.coef * 0.5 * mean(per_token)
        metrics = {
            "value_loss": loss.detach(),
            "clipfrac": mean(clipped_more.to(values.dtype)).detach(),
            "values": mean(values.detach()),
            "returns": mean(returns),
        }
        return TermOutput(loss, loss.detach(), metrics)
