"""The central invariant: for every preset, the gradient (and value) of the estimator's loss equals
the gradient of the method's closed-form loss, written here independently, in float64.

Run ``python tests/test_gradient_identity.py`` to print each preset's max relative error.
"""

from __future__ import annotations

from collections.abc import Callable

import closed_forms_distillation
import closed_forms_dpo_family
import closed_forms_dppo
import closed_forms_gigpo
import closed_forms_group_baselines
import closed_forms_m2po
import closed_forms_minimal_rl
import closed_forms_process
import closed_forms_reinforce
import pytest
import torch
import torch.nn.functional as F
from batches import DTYPE, gspo_batch, hybrid_batch, luffy_batch, pair_batch, rel_error, rl_batch
from closed_forms_frontier import (
    closed_cispo,
    closed_dapo,
    closed_gmpo,
    closed_grpo_dual,
    closed_grpo_kl,
    closed_grpo_kl_weighted,
    closed_gspo,
    closed_lite_ppo,
    closed_luspo,
    closed_rloo,
    closed_sapo,
    closed_vespo,
)
from closed_forms_multi_reward import closed_gdpo, multi_reward_batch
from closed_forms_pairs import (
    closed_apo_zero_unpaired,
    closed_cpo,
    closed_kto,
    closed_orpo,
    closed_orpo_with_prompt,
    closed_reward_model,
    closed_simpo,
    kto_batch,
    likely_pairs,
    prompted_pairs,
    score_pairs,
    score_pairs_with_margins,
    unpaired_batch,
)
from test_critic_math import loop_gae
from torch import Tensor

from alignlib import algorithms
from alignlib.estimator import Batch, Role

TOLERANCE = 1e-10


# ---------- independent closed forms -------------------------------------------------------


def seq_sum(lp: Tensor, m: Tensor) -> Tensor:
    return (lp * m).sum(-1)


def seq_mean(lp: Tensor, m: Tensor) -> Tensor:
    return seq_sum(lp, m) / m.sum(-1)


def rows_of(b: Batch, role: Role) -> Tensor:
    return (b.roles == int(role)).nonzero().flatten()


def pairs(b: Batch, reduce: Callable = seq_sum, field: str = "logprobs") -> tuple[Tensor, Tensor]:
    values = reduce(getattr(b, field), b.mask)
    return values[rows_of(b, Role.CHOSEN)], values[rows_of(b, Role.REJECTED)]


def dpo_margin(b: Batch, reduce: Callable = seq_sum) -> Tensor:
    pw, pl = pairs(b, reduce)
    rw, rl = pairs(b, reduce, "ref_logprobs")
    return (pw - rw) - (pl - rl)


def gold_nll(b: Batch) -> Tensor:
    gold = rows_of(b, Role.DEMO)
    m = b.mask[gold]
    return -(b.logprobs[gold] * m).sum() / m.sum()


def group_advantage(b: Batch, rows: Tensor, std: bool) -> Tensor:
    """(R − mean)/(std + 1e-6) or R − mean per group, looping over groups explicitly."""
    adv = torch.zeros_like(b.rewards)
    for g in b.group_ids[rows].unique():
        members = rows[b.group_ids[rows] == g]
        r = b.rewards[members]
        if members.numel() == 1:
            continue
        centred = r - r.mean()
        adv[members] = centred / (r.std(unbiased=True) + 1e-6) if std else centred
    return adv


def ppo_token_loss(b: Batch, adv: Tensor, eps: float, dual: float | None = None) -> Tensor:
    ratio = torch.exp(b.logprobs - b.old_logprobs)
    a = adv.unsqueeze(-1)
    loss = torch.maximum(-ratio * a, -ratio.clamp(1 - eps, 1 + eps) * a)
    if dual is not None:
        loss = torch.where(a < 0, torch.minimum(loss, -dual * a), loss)
    return loss


def token_mean(values: Tensor, m: Tensor) -> Tensor:
    return (values * m).sum() / m.sum()


def seq_mean_token_mean(values: Tensor, m: Tensor) -> Tensor:
    return ((values * m).sum(-1) / m.sum(-1)).mean()


def all_rows(b: Batch) -> Tensor:
    return torch.arange(b.num_rows)


def closed_sft(b: Batch) -> Tensor:
    return token_mean(-b.logprobs, b.mask)


def closed_dpo(b: Batch, beta: float = 0.1) -> Tensor:
    return -F.logsigmoid(beta * dpo_margin(b)).mean()


def closed_ipo(b: Batch, beta: float = 0.1) -> Tensor:
    return ((dpo_margin(b, seq_mean) - 1 / (2 * beta)) ** 2).mean()


def closed_hinge(b: Batch, beta: float = 0.1) -> Tensor:
    return F.relu(1 - beta * dpo_margin(b)).mean()


def closed_rpo(b: Batch, beta: float = 0.01, eta: float = 0.005) -> Tensor:
    pw, _ = pairs(b)
    return (-F.logsigmoid(beta * dpo_margin(b)) - eta * beta * pw).mean()


def closed_rpo_avg(b: Batch, beta: float = 0.5, eta: float = 0.2) -> Tensor:
    pw, _ = pairs(b, seq_mean)
    return (-F.logsigmoid(beta * dpo_margin(b)) - eta * pw).mean()


def closed_tpo(b: Batch, beta: float = 0.01, alpha: float = 1.0) -> Tensor:
    pw, pl = pairs(b)
    return -F.logsigmoid(beta * (pw - pl)).mean() + alpha * gold_nll(b)


def closed_tpo_l(b: Batch, beta: float = 2.0, gamma: float = 0.5, alpha: float = 1.0) -> Tensor:
    pw, pl = pairs(b, seq_mean)
    return -F.logsigmoid(beta * (pw - pl) - gamma).mean() + alpha * gold_nll(b)


def closed_inpo(b: Batch, ratio: float = 1 / 3, eta: float = 0.005) -> Tensor:
    (pw, pl), (rw, rl), (qw, ql) = (
        pairs(b),
        pairs(b, field="ref_logprobs"),
        pairs(b, field="prev_logprobs"),
    )
    h = (pw - pl) - ratio * (rw - rl) - (1 - ratio) * (qw - ql)
    return ((h - 1 / (2 * eta)) ** 2).mean()


def closed_bvpo(b: Batch, alpha: float = 0.5, beta: float = 0.1) -> Tensor:
    losses = -F.logsigmoid(beta * dpo_margin(b))
    trace = b.trace[rows_of(b, Role.CHOSEN)]
    return alpha * losses[trace].mean() + (1 - alpha) * losses[~trace].mean()


def closed_ppo(b: Batch) -> Tensor:
    # REINFORCE++ advantage: the reward on every valid token, whitened over all valid tokens.
    tokens = b.rewards.unsqueeze(-1).expand_as(b.mask)[b.mask > 0]
    adv_tok = (b.rewards.unsqueeze(-1) - tokens.mean()) / torch.sqrt(
        tokens.var(unbiased=False) + 1e-8
    )
    ratio = torch.exp(b.logprobs - b.old_logprobs)
    loss = torch.maximum(-ratio * adv_tok, -ratio.clamp(0.8, 1.2) * adv_tok)
    loss = torch.where(adv_tok < 0, torch.minimum(loss, -3.0 * adv_tok), loss)
    return token_mean(loss, b.mask)


def critic_rl_batch(seed: int = 0) -> Batch:
    """RL rows with a critic's values of every token."""
    batch = rl_batch(spread=0.8, seed=seed)
    gen = torch.Generator().manual_seed(100 + seed)
    return batch.replace(values=torch.randn(batch.logprobs.shape, generator=gen, dtype=DTYPE))


def closed_ppo_gae(b: Batch) -> Tensor:
    # GAE (γ 1, λ 0.95, β 0.05 k1 in the reward) by a per-row loop, whitened; PPO clip 0.2.
    adv = loop_gae(b, gamma=1.0, lam=0.95, kl_coef=0.05)[2]
    ratio = torch.exp(b.logprobs - b.old_logprobs)
    return token_mean(torch.maximum(-ratio * adv, -ratio.clamp(0.8, 1.2) * adv), b.mask)


def closed_grpo(b: Batch) -> Tensor:
    adv = group_advantage(b, all_rows(b), std=True)
    return seq_mean_token_mean(ppo_token_loss(b, adv, 0.2), b.mask)


def closed_dr_grpo(b: Batch) -> Tensor:
    adv = group_advantage(b, all_rows(b), std=False)
    return (ppo_token_loss(b, adv, 0.2) * b.mask).sum() / b.width


def closed_kl_cov(b: Batch, ratio: float = 2e-3, coef: float = 1.0) -> Tensor:
    adv = group_advantage(b, all_rows(b), std=True).unsqueeze(-1).expand_as(b.mask)
    valid = b.mask > 0
    lp = b.logprobs.detach()
    cov = (lp - lp[valid].mean()) * (adv - adv[valid].mean())
    flat = [(float(cov.flatten()[i]), i) for i in valid.flatten().nonzero().flatten().tolist()]
    k = max(1, int(valid.sum() * ratio))
    top = [i for _, i in sorted(flat, key=lambda t: (-t[0], t[1]))[:k]]
    selected = torch.zeros(b.mask.numel(), dtype=b.mask.dtype)
    selected[top] = 1
    selected = selected.view_as(b.mask)
    ratio_t = torch.exp(b.logprobs - b.old_logprobs)
    loss = -adv * ratio_t + coef * (b.logprobs - b.old_logprobs).abs() * selected
    return token_mean(loss, b.mask)


def closed_clip_cov(b: Batch, dropped: Tensor) -> Tensor:
    adv = group_advantage(b, all_rows(b), std=True)
    loss = ppo_token_loss(b, adv, 1.0) * (~dropped).to(b.mask.dtype)
    return token_mean(loss, b.mask)


def closed_hpt(b: Batch, sft_coef: float = 1.0, entropy_coef: float = 0.001) -> Tensor:
    rl = rows_of(b, Role.SAMPLE)
    adv = group_advantage(b, rl, std=False)[rl].unsqueeze(-1)
    ratio = torch.exp(b.logprobs[rl] - b.old_logprobs[rl])
    rl_term = (-adv * ratio * b.mask[rl]).sum() / 8192
    return rl_term + sft_coef * gold_nll(b) - entropy_coef * token_mean(b.entropy, b.mask)


def closed_hpt_paper(b: Batch) -> Tensor:
    rl = rows_of(b, Role.SAMPLE)
    adv = group_advantage(b, rl, std=True)
    rl_term = seq_mean_token_mean(ppo_token_loss(b, adv, 0.2)[rl], b.mask[rl])
    return rl_term + gold_nll(b)


def closed_luffy(b: Batch, gamma: float = 0.1) -> Tensor:
    adv = group_advantage(b, all_rows(b), std=False)
    on = ppo_token_loss(b, adv, 0.2)
    p = b.logprobs.exp()
    off = -adv.unsqueeze(-1) * p / (p + gamma)
    demo = (b.roles == int(Role.DEMO)).unsqueeze(-1)
    return token_mean(torch.where(demo, off, on), b.mask) - 0.001 * token_mean(b.entropy, b.mask)


# preset name -> (batch builder, closed form, overrides)
CASES: dict[str, tuple[Callable[..., Batch], Callable[[Batch], Tensor], dict]] = {
    "sft": (rl_batch, closed_sft, {}),
    "dpo": (pair_batch, closed_dpo, {}),
    "ipo": (pair_batch, closed_ipo, {}),
    "hinge": (pair_batch, closed_hinge, {}),
    "hinge_both_regions": (pair_batch, lambda b: closed_hinge(b, beta=0.15), {"beta": 0.15}),
    "rpo": (pair_batch, closed_rpo, {}),
    "rpo_avg": (pair_batch, closed_rpo_avg, {}),
    "tpo": (lambda seed=0: pair_batch(gold=True, seed=seed), closed_tpo, {}),
    "tpo_l": (lambda seed=0: pair_batch(gold=True, seed=seed), closed_tpo_l, {}),
    "simpo": (pair_batch, closed_simpo, {}),
    "simpo_nll": (pair_batch, lambda b: closed_simpo(b, alpha=0.7), {"alpha": 0.7}),
    "cpo": (pair_batch, closed_cpo, {}),
    "orpo": (pair_batch, closed_orpo, {}),
    "orpo_likely": (likely_pairs, lambda b: closed_orpo(b, lam=0.3), {"beta": 0.3}),
    "orpo_prompt_loss": (prompted_pairs, closed_orpo_with_prompt, {"prompt_loss": True}),
    "kto": (kto_batch, closed_kto, {}),
    "reward_model": (score_pairs, closed_reward_model, {}),
    "reward_model_centred": (
        score_pairs,
        lambda b: closed_reward_model(b, margin=0.5, center=0.01),
        {"margin": 0.5, "center_coef": 0.01},
    ),
    "reward_model_row_margins": (
        score_pairs_with_margins,
        lambda b: closed_reward_model(b, margin=0.25),
        {"margin": 0.25},
    ),
    "kto_clamped": (
        lambda seed=0: kto_batch(seed, kl_shift=-0.6),
        lambda b: closed_kto(b, beta=0.5, w_d=1.3, w_u=0.8),
        {"beta": 0.5, "desirable_weight": 1.3, "undesirable_weight": 0.8},
    ),
    "apo_zero_unpaired": (unpaired_batch, closed_apo_zero_unpaired, {}),
    "apo_zero_unpaired_weighted": (
        unpaired_batch,
        lambda b: closed_apo_zero_unpaired(b, beta=0.5, w_d=1.3, w_u=0.8),
        {"beta": 0.5, "desirable_weight": 1.3, "undesirable_weight": 0.8},
    ),
    "inpo": (pair_batch, closed_inpo, {}),
    "bvpo": (pair_batch, closed_bvpo, {}),
    "ppo": (lambda seed=0: rl_batch(spread=0.8, seed=seed), closed_ppo, {}),
    "ppo_gae": (critic_rl_batch, closed_ppo_gae, {}),
    "grpo": (rl_batch, closed_grpo, {}),
    "dr_grpo": (rl_batch, closed_dr_grpo, {}),
    "kl_cov": (rl_batch, lambda b: closed_kl_cov(b, ratio=0.05), {"ratio": 0.05}),
    "hpt": (hybrid_batch, closed_hpt, {}),
    "hpt_paper": (hybrid_batch, closed_hpt_paper, {}),
    "luffy": (luffy_batch, closed_luffy, {}),
    "grpo_kl": (rl_batch, closed_grpo_kl, {"kl_coef": 0.04}),
    "grpo_kl_weighted": (
        lambda seed=0: rl_batch(spread=0.8, seed=seed),
        closed_grpo_kl_weighted,
        {"kl_coef": 0.04, "kl_importance_weighted": True},
    ),
    "grpo_dual_clip": (
        lambda seed=0: rl_batch(spread=0.8, seed=seed),
        closed_grpo_dual,
        {"clip_c": 3.0},
    ),
    "gspo": (gspo_batch, closed_gspo, {}),
    "gspo_sequence": (gspo_batch, closed_gspo, {"level": "sequence"}),
    "luspo": (gspo_batch, closed_luspo, {}),
    "rloo": (lambda seed=0: rl_batch(spread=0.05, seed=seed), closed_rloo, {}),
    "rloo_normalized": (
        lambda seed=0: rl_batch(spread=0.05, seed=seed),
        lambda b: closed_rloo(b, 0.1, 0.3, normalize=True),
        {"kl_coef": 0.1, "eps_low": 0.3, "eps_high": 0.3, "normalize_advantages": True},
    ),
    "cispo": (rl_batch, closed_cispo, {}),
    "dapo": (rl_batch, closed_dapo, {}),
    "sapo": (lambda seed=0: rl_batch(spread=0.8, seed=seed), closed_sapo, {}),
    "vespo": (lambda seed=0: rl_batch(spread=0.4, seed=seed), closed_vespo, {}),
    "lite_ppo": (lambda seed=0: rl_batch(spread=0.8, seed=seed), closed_lite_ppo, {}),
    "gmpo": (lambda seed=0: rl_batch(spread=0.6, seed=seed), closed_gmpo, {}),
    "gmpo_tight_kl": (
        lambda seed=0: rl_batch(spread=0.6, seed=seed),
        lambda b: closed_gmpo(b, 0.1, 0.2, beta=0.04),
        {"eps_low": 0.1, "eps_high": 0.2, "kl_coef": 0.04},
    ),
    "gdpo": (multi_reward_batch, closed_gdpo, {}),
}

# Extra cases of one preset: case name -> preset name.
VARIANTS = {
    "hinge_both_regions": "hinge",
    "grpo_kl": "grpo",
    "grpo_kl_weighted": "grpo",
    "grpo_dual_clip": "grpo",
    "gmpo_tight_kl": "gmpo",
    "rloo_normalized": "rloo",
    "gspo_sequence": "gspo",
    "simpo_nll": "simpo",
    "orpo_likely": "orpo",
    "orpo_prompt_loss": "orpo",
    "kto_clamped": "kto",
    "apo_zero_unpaired_weighted": "apo_zero_unpaired",
    "reward_model_centred": "reward_model",
    "reward_model_row_margins": "reward_model",
}
CASES |= closed_forms_dpo_family.CASES
VARIANTS |= closed_forms_dpo_family.VARIANTS
CASES |= closed_forms_distillation.CASES
VARIANTS |= closed_forms_distillation.VARIANTS
CASES |= closed_forms_process.CASES
VARIANTS |= closed_forms_process.VARIANTS
CASES |= closed_forms_group_baselines.CASES
VARIANTS |= closed_forms_group_baselines.VARIANTS
CASES |= closed_forms_dppo.CASES
VARIANTS |= closed_forms_dppo.VARIANTS
CASES |= closed_forms_reinforce.CASES
VARIANTS |= closed_forms_reinforce.VARIANTS
CASES |= closed_forms_m2po.CASES
VARIANTS |= closed_forms_m2po.VARIANTS
CASES |= closed_forms_gigpo.CASES
VARIANTS |= closed_forms_gigpo.VARIANTS
CASES |= closed_forms_minimal_rl.CASES
VARIANTS |= closed_forms_minimal_rl.VARIANTS


def estimator_for(case: str, overrides: dict):
    return algorithms.get(VARIANTS.get(case, case), **overrides)


def measure(case: str, seed: int = 0) -> tuple[float, float]:
    """(relative gradient error, absolute loss-value error) of one preset on one random batch."""
    build, closed, overrides = CASES[case]
    batch = build(seed=seed)  # each seed is a different random batch
    estimator = estimator_for(case, overrides)
    out = estimator(batch)
    reference = closed(batch)
    inputs = [batch.logprobs] + ([batch.entropy] if batch.entropy is not None else [])
    got = torch.autograd.grad(out.loss, inputs, allow_unused=True)
    want = torch.autograd.grad(reference, inputs, allow_unused=True)
    errors = [
        rel_error(
            g if g is not None else torch.zeros_like(x), w if w is not None else torch.zeros_like(x)
        )
        for g, w, x in zip(got, want, inputs, strict=True)
        if not (g is None and w is None)
    ]
    return max(errors), abs(float(out.loss.detach()) - float(reference.detach()))


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_equals_closed_form(case: str) -> None:
    for seed in range(3):
        grad_error, value_error = measure(case, seed)
        assert grad_error < TOLERANCE, f"{case}: relative gradient error {grad_error:.2e}"
        assert value_error < 1e-9, f"{case}: loss value differs by {value_error:.2e}"


def test_clip_cov_gradient_equals_closed_form() -> None:
    batch = rl_batch(num_groups=6, group_size=4, width=12)
    estimator = algorithms.get("clip_cov", ratio=0.05, cov_low=0.0, cov_high=50.0)
    prepared = estimator.prepare(batch)
    dropped = prepared.prepared["0.mask0.drop"]
    assert int(dropped.sum()) == int(0.05 * batch.mask.sum())
    out = estimator(prepared)
    reference = closed_clip_cov(batch, dropped)
    got = torch.autograd.grad(out.loss, batch.logprobs)[0]
    want = torch.autograd.grad(reference, batch.logprobs)[0]
    assert rel_error(got, want) < TOLERANCE
    assert abs(float(out.loss.detach()) - float(reference.detach())) < 1e-12


def test_every_preset_is_covered() -> None:
    covered = {VARIANTS.get(c, c) for c in CASES} | {"clip_cov"}
    assert covered == set(algorithms.available())


def test_closed_forms_are_sensitive() -> None:
    """Guard against a vacuous identity: changing a hyperparameter changes the gradient."""
    batch = pair_batch()
    base = torch.autograd.grad(algorithms.get("dpo")(batch).loss, batch.logprobs)[0]
    other = torch.autograd.grad(algorithms.get("dpo", beta=0.2)(batch).loss, batch.logprobs)[0]
    assert rel_error(base, other) > 1e-3


def test_random_batches_exercise_every_branch() -> None:
    """The identities above only mean something if clipping, dual clipping and both hinge
    regions actually occur in the random batches."""
    ppo_metrics = algorithms.get("ppo")(rl_batch(spread=0.8)).metrics
    assert 0 < float(ppo_metrics["ppo/clipfrac"]) < 1
    assert float(ppo_metrics["ppo/clipfrac_lower"]) > 0
    grpo_metrics = algorithms.get("grpo")(rl_batch()).metrics
    assert 0 < float(grpo_metrics["grpo/clipfrac"]) < 1
    batch = pair_batch()
    logits = 0.15 * dpo_margin(batch)
    assert bool((logits < 1).any()) and bool((logits >= 1).any())


if __name__ == "__main__":
    print(f"{'preset':<20} {'max rel. grad error':>20} {'max |loss diff|':>16}")
    for case in sorted(CASES):
        results = [measure(case, seed) for seed in range(5)]
        print(f"{case:<20} {max(r[0] for r in results):>20.2e} {max(r[1] for r in results):>16.2e}")
