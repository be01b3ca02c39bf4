"""KTO's weights (Ethayarajh et al. 2024): unpaired desirable / undesirable completions, each
judged against a reference point z₀ that is itself estimated from the batch.

Loss of a desirable row: λ_D·(1 − σ(β(r − z₀))); of an undesirable row: λ_U·(1 − σ(β(z₀ − r))),
with r = l(y) − l_ref(y) (sequence sums) and z₀ = max(0, mean over the KL rows of r): the KL
rows are mismatched (prompt, completion) pairs (Role.KL) that estimate KL(π‖π_ref); z₀ passes
no gradient (the paper; TRL computes it under no_grad). The gradient is −Σ_i c_i ∇l(y_i) with

    c_i = λ_D·β·σ(u)σ(−u),   u = β(r − z₀)      (desirable)
    c_i = −λ_U·β·σ(v)σ(−v),  v = β(z₀ − r)      (undesirable)

z₀ is a statistic of the whole mini-batch, so the weights are computed once, in ``prepare``,
from the present log-probs of every row (a no-grad pass), which keeps the gradient independent
of micro-batching. TRL estimates z₀ per device micro-batch instead (equal with one micro-batch
per step and one process).

``reference_point="zero"`` fixes z₀ = 0 and needs no KL rows: desirable rows then lose
1 − σ(βr) and undesirable ones 1 − σ(−βr) = σ(βr), APO-zero's loss (D'Oosterlinck et al. 2024)
on unpaired rows (TRL KTOTrainer's ``loss_type="apo_zero_unpaired"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from alignlib.estimator.advantages import ADVANTAGES, Advantage, AdvantageResult
from alignlib.estimator.batch import Batch, BatchError, Role
from alignlib.estimator.preferences import check_beta
from alignlib.estimator.registry import check_choice, check_number
from alignlib.estimator.units import Likelihood


@ADVANTAGES.register("kto")
@dataclass(frozen=True)
class KTOWeights(Advantage):
    """KTO's per-row weights (see the module docstring); β = 0.1, λ_D = λ_U = 1 (paper, TRL)."""

    needs: ClassVar[dict[str, str]] = {
        "ref_logprobs": "KTO's implicit reward r = log π − log π_ref needs reference log-probs"
    }
    reads_logprobs: ClassVar[bool] = True
    metric_weights: ClassVar[Literal["pair", "summed", "unit"]] = "summed"
    beta: float = 0.1
    desirable_weight: float = 1.0
    """λ_D. The paper keeps λ_D·n_D / (λ_U·n_U) in [1, 4/3] for n_D desirable, n_U undesirable
    examples."""
    undesirable_weight: float = 1.0
    """λ_U."""
    reference_point: Literal["kl", "zero"] = "kl"
    """z₀: `kl`, max(0, mean implicit reward of the KL rows) (KTO); `zero`: 0, no KL rows
    (APO-zero on unpaired rows, TRL's apo_zero_unpaired)."""

    @property
    def needs_kl_rows(self) -> bool:  # type: ignore[override]
        return self.reference_point == "kl"

    def __post_init__(self) -> None:
        check_beta(self, self.beta)
        check_choice("KTOWeights", "reference_point", self.reference_point, ("kl", "zero"))
        for name in ("desirable_weight", "undesirable_weight"):
            check_number("KTOWeights", name, getattr(self, name), gt=0, why="weighs its rows' loss")

    def balance_advice(self, desirable: int, undesirable: int) -> str | None:
        """Why the data's mix of desirable and undesirable examples falls outside the paper's
        advice λ_D·n_D / (λ_U·n_U) ∈ [1, 4/3] (its Eq. 8), and the weights that would fit it;
        None when it fits."""
        if desirable == 0 or undesirable == 0:
            kind = "undesirable (label false)" if undesirable == 0 else "desirable (label true)"
            return f"no {kind} examples: KTO then trains one direction only; add some"
        ratio = self.desirable_weight * desirable / (self.undesirable_weight * undesirable)
        if 1.0 <= ratio <= 4 / 3:
            return None
        low_d = undesirable * self.undesirable_weight / desirable
        low_u = desirable * self.desirable_weight / undesirable
        return (
            f"{desirable} desirable and {undesirable} undesirable examples with desirable_weight "
            f"{self.desirable_weight:g} and undesirable_weight {self.undesirable_weight:g} give "
            f"λ_D·n_D / (λ_U·n_U) = {ratio:.2f}, outside the KTO paper's [1, 4/3]; set "
            f"algorithm.params.desirable_weight in [{low_d:.2f}, {low_d * 4 / 3:.2f}] or "
            f"undesirable_weight in [{low_u * 3 / 4:.2f}, {low_u:.2f}] (not both)"
        )

    def estimate_z0(self, batch: Batch, rewards: Tensor) -> Tensor:
        """z₀ = max(0, mean implicit reward of the KL rows), detached (0 for `zero`)."""
        if not self.needs_kl_rows:
            return rewards.new_zeros(())
        kl_rows = batch.role_codes() == int(Role.KL)
        if not bool(kl_rows.any()):
            raise BatchError(
                "KTO needs KL rows (Role.KL: mismatched prompt/completion pairs) to estimate its "
                "reference point; the kto data format adds them"
            )
        return rewards[kl_rows].mean().clamp(min=0).detach()

    def compute(self, batch: Batch, rows: Tensor, likelihood: Likelihood) -> AdvantageResult:
        if batch.ref_logprobs is None:
            raise BatchError("KTO needs batch.ref_logprobs")
        rewards = likelihood.sequence(batch.logprobs.detach(), batch.mask) - likelihood.sequence(
            batch.ref_logprobs.detach(), batch.mask
        )
        z0 = self.estimate_z0(batch, rewards)
        codes = batch.role_codes()
        desirable = rows & (codes == int(Role.CHOSEN))
        undesirable = rows & (codes == int(Role.REJECTED))
        u, v = self.beta * (rewards - z0), self.beta * (z0 - rewards)
        zeros = torch.zeros_like(rewards)
        c_desirable = self.desirable_weight * self.beta * torch.sigmoid(u) * torch.sigmoid(-u)
        c_undesirable = -self.undesirable_weight * self.beta * torch.sigmoid(v) * torch.sigmoid(-v)
        values = torch.where(desirable, c_desirable, torch.where(undesirable, c_undesirable, zeros))
        loss = torch.where(
            desirable,
            self.desirable_weight * (1 - torch.sigmoid(u)),
            torch.where(undesirable, self.undesirable_weight * (1 - torch.sigmoid(v)), zeros),
        )
        metrics = self.metrics(rows, (desirable, undesirable), z0, self.beta * rewards)
        return AdvantageResult(values.detach(), loss.detach(), metrics)

    @staticmethod
    def metrics(
        rows: Tensor, kinds: tuple[Tensor, Tensor], z0: Tensor, beta_r: Tensor
    ) -> dict[str, Tensor]:
        """Each row's share of z₀, of the mean β·r of its kind (desirable rows under
        ``chosen_reward``, undesirable under ``rejected_reward``) and of their difference: the
        shares add up, over any micro-batches, to the mini-batch's values."""
        zeros = torch.zeros_like(beta_r)
        desirable, undesirable = kinds
        chosen = torch.where(desirable, beta_r / desirable.sum().clamp(min=1), zeros)
        rejected = torch.where(undesirable, beta_r / undesirable.sum().clamp(min=1), zeros)
        return {
            "kl": torch.where(rows, z0 / rows.sum().clamp(min=1), zeros),
            "chosen_reward": chosen,
            "rejected_reward": rejected,
            "margin": chosen - rejected,
        }
