"""GSPO, CISPO, DAPO, SAPO and GRPO + KL: the random batches of the gradient-identity tests hit
every clip, gate and filter; the variants that must agree do; DAPO's soft overlong reward."""

from __future__ import annotations

import pytest
import torch
from batches import gspo_batch, rel_error, rl_batch
from closed_forms_frontier import advantages, dapo_kept_rows

from alignlib import algorithms
from alignlib.estimator import GroupNormalized, KLPenalty, PPOClip, UnifiedEstimator
from alignlib.rewards import get_reward, soft_overlong_penalty


def grad(estimator: UnifiedEstimator, batch) -> torch.Tensor:
    return torch.autograd.grad(estimator(batch).loss, batch.logprobs)[0]


def test_new_presets_are_available() -> None:
    assert {"gspo", "cispo", "dapo", "sapo"} <= set(algorithms.available())


@pytest.mark.parametrize("seed", range(3))
def test_gspo_batches_clip_some_sequences_and_pass_others(seed: int) -> None:
    b = gspo_batch(seed=seed)
    m = b.mask
    s = torch.exp(((b.logprobs - b.old_logprobs) * m).sum(-1) / m.sum(-1)).detach()
    adv = advantages(b)
    clipped = ((adv > 0) & (s > 1 + 4e-4)) | ((adv < 0) & (s < 1 - 3e-4))
    assert bool(clipped.any()) and bool((~clipped & (adv != 0)).any())
    frac = float(algorithms.get("gspo")(b).metrics["gspo/clipfrac"])
    assert 0 < frac < 1


def test_gspo_token_and_sequence_forms_agree() -> None:
    b = gspo_batch()
    token, sequence = algorithms.get("gspo"), algorithms.get("gspo", level="sequence")
    assert rel_error(grad(token, b), grad(sequence, b)) < 1e-12
    assert abs(float(token(b).loss) - float(sequence(b).loss)) < 1e-15


@pytest.mark.parametrize("seed", range(3))
def test_cispo_caps_some_weights_and_keeps_every_gradient(seed: int) -> None:
    b = rl_batch(seed=seed)
    ratio = torch.exp(b.logprobs - b.old_logprobs).detach()
    assert bool(((ratio > 1.2) & (b.mask > 0)).any())
    assert 0 < float(algorithms.get("cispo")(b).metrics["cispo/clipfrac"]) < 1
    # No token with a nonzero advantage loses its gradient (PPO's clip would zero some).
    g = grad(algorithms.get("cispo"), b)
    moving = (advantages(b) != 0).unsqueeze(-1) & (b.mask > 0)
    assert bool((g[moving] != 0).all())
    assert bool((grad(algorithms.get("grpo"), b)[moving] == 0).any())


def test_dapo_filters_groups_and_clip_higher_matters() -> None:
    b = rl_batch()
    assert not bool(dapo_kept_rows(b).all())
    assert float(algorithms.get("dapo")(b).metrics["dapo/filtered_frac"]) > 0
    ratio = torch.exp(b.logprobs - b.old_logprobs).detach()
    between = (ratio > 1.2) & (ratio <= 1.28) & (advantages(b) > 0).unsqueeze(-1) & (b.mask > 0)
    assert bool(between.any())
    symmetric = algorithms.get("dapo", eps_high=0.2)
    assert rel_error(grad(algorithms.get("dapo"), b), grad(symmetric, b)) > 1e-3


def test_sapo_gate_is_soft_and_exact_on_policy() -> None:
    b = rl_batch(spread=0.8)
    gate = float(algorithms.get("sapo")(b).metrics["sapo/gate_grad"])
    assert 0 < gate < 1  # off-policy tokens are damped, none cut to exactly zero
    on_policy = b.replace(old_logprobs=b.logprobs.detach())
    plain = UnifiedEstimator(
        reference="old", advantage=GroupNormalized(), aggregation="seq-mean-token-mean"
    )
    assert rel_error(grad(algorithms.get("sapo"), on_policy), grad(plain, on_policy)) < 1e-12


def test_grpo_kl_is_inside_the_sequence_mean_not_the_token_mean() -> None:
    """The old composition (KL averaged over all tokens) differs from eq. 3 on ragged rows."""
    b = rl_batch()
    old_way = UnifiedEstimator(
        mask=PPOClip(),
        reference="old",
        advantage=GroupNormalized(),
        aggregation="seq-mean-token-mean",
        regularizers=[KLPenalty(coef=0.04)],
    )
    assert rel_error(grad(old_way, b), grad(algorithms.get("grpo", kl_coef=0.04), b)) > 1e-3


def test_grpo_dual_clip_binds_and_is_off_by_default() -> None:
    b = rl_batch(spread=0.8)
    assert float(algorithms.get("grpo", clip_c=3.0)(b).metrics["grpo/clipfrac_lower"]) > 0
    assert "grpo/clipfrac_lower" not in algorithms.get("grpo")(b).metrics
    assert algorithms.parameters("grpo")["clip_c"] is None


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [(100, 0.0), (16384, 0.0), (16385, -1 / 4096), (18432, -0.5), (20480, -1.0), (20481, -1.0)],
)
def test_soft_overlong_penalty_is_dapo_eq_13(tokens: int, expected: float) -> None:
    assert soft_overlong_penalty("x", num_tokens=tokens) == pytest.approx(expected)


def test_soft_overlong_penalty_options_and_registration() -> None:
    assert get_reward("soft_overlong") is soft_overlong_penalty
    assert soft_overlong_penalty("x", num_tokens=22528, floor=False) == pytest.approx(-1.5)
    assert soft_overlong_penalty("abcdef", max_length=8, cache_length=4) == pytest.approx(-0.5)
    assert soft_overlong_penalty("x", num_tokens=20000, factor=0.5) < 0
    with pytest.raises(ValueError, match="cache_length"):
        soft_overlong_penalty("x", max_length=10, cache_length=20)


def vespo_phi(batch) -> torch.Tensor:
    """[R] the weight VESPO's mask puts on each row (read off its unit weights)."""
    from alignlib.estimator.masks import UnitTerms

    term = algorithms.get("vespo").terms[0]
    units = term.units(batch, torch.ones(batch.num_rows, dtype=torch.bool), detach=True)
    adv = term.per_unit(advantages(batch))
    terms = UnitTerms(weight=torch.ones_like(units.mask), value=torch.zeros_like(units.mask))
    return term.masks[0].apply(units, adv, terms, {}).weight[:, 0]


@pytest.mark.parametrize("engine", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_vespo_weights_equal_trls_gamma_weights(seed: int, engine: bool) -> None:
    from trl import GRPOTrainer

    b = rl_batch(seed=seed, spread=0.4)
    m = b.mask
    ratio = None
    if engine:  # the engine sampled from a third policy: w is measured against it
        gen = torch.Generator().manual_seed(seed)
        sampler = b.old_logprobs + 0.2 * torch.randn(m.shape, generator=gen, dtype=m.dtype)
        b = b.replace(behaviour_logprobs=sampler)
        ratio = torch.exp((b.old_logprobs - sampler) * m)  # TRL's π_old/π_sampler, 1 off-mask
    theirs = GRPOTrainer.get_gamma_weights(
        advantages=advantages(b).unsqueeze(-1),
        log_ratio_per_token=(b.logprobs - b.old_logprobs).detach(),
        mask=m,
        importance_sampling_ratio=ratio,
    ).flatten()
    ours = vespo_phi(b)
    assert rel_error(ours, theirs) < 1e-12
    assert float(ours.min()) < 0.5 < 0.9 < float(ours.max())  # the kernel really reshapes


def test_vespo_refuses_a_second_rollout_correction() -> None:
    from alignlib.estimator import rollout_correction

    with pytest.raises(ValueError, match=r"already weighs the loss.*rollout_correction"):
        algorithms.get("vespo").with_rollout_correction(rollout_correction({"mode": "tis"}))
