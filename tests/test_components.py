"""Registries, clear errors, and each component's own behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from batches import pair_batch, rel_error, rl_batch

from alignlib import algorithms
from alignlib.estimator import (
    ADVANTAGES,
    AGGREGATIONS,
    LIKELIHOODS,
    MASKS,
    NLL,
    REFERENCES,
    REGULARIZERS,
    Advantage,
    AdvantageResult,
    Batch,
    BatchError,
    EstimatorInputError,
    KLPenalty,
    Registry,
    RegistryError,
    Role,
    Rows,
    UnifiedEstimator,
)
from alignlib.estimator.registry import ParameterError


def test_every_kind_has_its_registry() -> None:
    assert set(MASKS.names()) >= {
        "completion",
        "ppo_clip",
        "clip_cov",
        "kl_cov",
        "group_filter",
        "difficulty_band",
        "clipped_is",
        "sapo_gate",
    }
    assert set(REFERENCES.names()) >= {"current", "old", "constant", "shaped"}
    assert set(ADVANTAGES.names()) >= {
        "constant",
        "grpo",
        "rloo",
        "reinforce_pp",
        "dpo",
        "ipo",
        "hinge",
        "rpo",
        "tpo",
        "tpo_l",
        "orpo",
        "inpo",
    }
    assert set(LIKELIHOODS.names()) == {
        "token",
        "sequence-sum",
        "sequence-mean",
        "sequence-mean-token",
        "score",
        "length-desensitized",
    }
    assert set(AGGREGATIONS.names()) >= {
        "token-mean",
        "seq-mean-token-sum",
        "seq-mean-token-mean",
        "seq-mean-token-sum-norm",
    }
    assert set(REGULARIZERS.names()) == {"kl", "entropy", "adaptive_entropy", "nll", "score_center"}


def test_duplicate_name_is_refused() -> None:
    registry: Registry[object] = Registry("thing")
    registry.register("a")(type("A", (), {}))
    with pytest.raises(RegistryError, match="'a' is already registered"):
        registry.register("a")(type("B", (), {}))


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(RegistryError) as info:
        ADVANTAGES.get("grp")
    message = str(info.value)
    assert "unknown advantage 'grp'" in message and "did you mean 'grpo'" in message
    assert "rloo" in message and "dpo" in message
    with pytest.raises(RegistryError, match=r"unknown algorithm 'dpoo'.*did you mean 'dpo'"):
        algorithms.get("dpoo")


def test_unknown_parameter_is_named() -> None:
    with pytest.raises(RegistryError, match=r"has no parameter 'bta'.*did you mean 'beta'"):
        ADVANTAGES.build("dpo", bta=0.1)
    with pytest.raises(RegistryError, match="algorithm 'grpo' has no parameter 'eps'"):
        algorithms.get("grpo", eps=0.1)


def test_missing_batch_field_names_field_and_component() -> None:
    batch = rl_batch().replace(old_logprobs=None)
    with pytest.raises(EstimatorInputError, match=r"batch\.old_logprobs is missing.*\(grpo: old\)"):
        algorithms.get("grpo")(batch)
    with pytest.raises(EstimatorInputError, match=r"batch\.prev_logprobs is missing.*π_t"):
        algorithms.get("inpo")(pair_batch().replace(prev_logprobs=None))


def test_bad_shapes_are_one_line_errors() -> None:
    with pytest.raises(BatchError, match=r"batch\.mask has shape \(2, 3\), expected \(2, 4\)"):
        Batch(logprobs=torch.zeros(2, 4), mask=torch.ones(2, 3))
    with pytest.raises(BatchError, match=r"batch\.rewards has shape \(3,\), expected \(2,\)"):
        Batch(logprobs=torch.zeros(2, 4), mask=torch.ones(2, 4), rewards=torch.zeros(3))


def test_incomplete_pair_is_reported() -> None:
    batch = pair_batch(num_pairs=3)
    broken = batch.select(torch.tensor([0, 1, 2, 3, 4]))  # pair 2 lost its rejected row
    with pytest.raises(BatchError, match=r"pair ids \[2\] lack a chosen or a rejected row"):
        algorithms.get("dpo")(broken)


def test_per_token_advantage_with_sequence_likelihood_is_refused() -> None:
    batch = rl_batch()
    batch = batch.replace(advantages=torch.ones_like(batch.logprobs))
    estimator = UnifiedEstimator(advantage="given", likelihood="sequence-sum")
    with pytest.raises(ValueError, match="per-token advantages need the 'token' likelihood"):
        estimator(batch)


def test_user_component_plugs_in() -> None:
    @dataclass(frozen=True)
    class SignAdvantage(Advantage):
        needs: ClassVar[dict[str, str]] = {"rewards": "sign of the reward"}

        def compute(self, batch, rows, likelihood) -> AdvantageResult:
            return AdvantageResult(torch.sign(batch.rewards - 0.5) * rows)

    name = "test_sign"
    if name not in ADVANTAGES:
        ADVANTAGES.register(name)(SignAdvantage)
    batch = rl_batch()
    loss = UnifiedEstimator(advantage=name, aggregation="seq-mean-token-sum")(batch).loss
    grad = torch.autograd.grad(loss, batch.logprobs)[0]
    sign = torch.sign(batch.rewards - 0.5).unsqueeze(-1)
    assert rel_error(grad, -sign * batch.mask / batch.num_rows) < 1e-14


def test_grpo_singletons_zero_or_raw() -> None:
    batch = rl_batch(num_groups=3, group_size=1)
    zero = ADVANTAGES.build("grpo").compute(batch, torch.ones(3, dtype=torch.bool), None).values
    raw = ADVANTAGES.build("grpo", singleton="raw").compute(
        batch, torch.ones(3, dtype=torch.bool), None
    )
    assert zero.abs().max() == 0
    assert torch.allclose(raw.values, batch.rewards / (1 + 1e-6))


def test_rloo_and_reinforce_pp() -> None:
    batch = rl_batch()
    rows = torch.ones(batch.num_rows, dtype=torch.bool)
    rloo = ADVANTAGES.build("rloo").compute(batch, rows, None).values
    for i in range(batch.num_rows):
        group = (batch.group_ids == batch.group_ids[i]).nonzero().flatten()
        others = [int(j) for j in group if j != i]
        assert abs(float(rloo[i] - (batch.rewards[i] - batch.rewards[others].mean()))) < 1e-12
    rpp = ADVANTAGES.build("reinforce_pp").compute(batch, rows, None).values
    valid = batch.mask > 0
    assert abs(float(rpp[valid].mean())) < 1e-12
    assert abs(float(rpp[valid].std(unbiased=False)) - 1) < 1e-6


def test_group_filter_removes_constant_groups_from_every_count() -> None:
    batch = rl_batch()  # group 0 is fully solved
    filtered = UnifiedEstimator(mask="group_filter", reference="old", advantage="grpo")
    out = filtered(batch)
    kept = batch.group_ids != 0
    manual = UnifiedEstimator(reference="old", advantage="grpo")(
        batch.select(kept.nonzero().flatten())
    )
    assert abs(float(out.loss) - float(manual.loss)) < 1e-12
    assert abs(float(out.metrics["pg/filtered_frac"]) - 0.25) < 1e-12


def test_difficulty_band_keeps_prompts_in_range() -> None:
    batch = rl_batch()
    est = UnifiedEstimator(mask=MASKS.build("difficulty_band", low=0.3, high=0.7), advantage="grpo")
    prepared = est.prepare(batch)
    for g in batch.group_ids.unique():
        rows = batch.group_ids == g
        rate = float((batch.rewards[rows] > 0.5).double().mean())
        kept = bool(prepared.mask[rows].sum() > 0)
        assert kept == (0.3 <= rate <= 0.7)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators(estimator: str) -> None:
    batch = rl_batch()
    loss = UnifiedEstimator(terms=[KLPenalty(coef=0.5, estimator=estimator)])(batch).loss
    d = (batch.ref_logprobs - batch.logprobs) * batch.mask
    per_token = {"k1": -d, "k2": 0.5 * d**2, "k3": d.exp() - d - 1}[estimator]
    want = 0.5 * (per_token * batch.mask).sum() / batch.mask.sum()
    g_got = torch.autograd.grad(loss, batch.logprobs)[0]
    g_want = torch.autograd.grad(want, batch.logprobs)[0]
    assert abs(float(loss) - float(want)) < 1e-12 and rel_error(g_got, g_want) < 1e-12


@pytest.mark.parametrize("estimator", ["k1+", "k3+"])
def test_straight_through_kl_has_its_value_and_k2s_gradient(estimator: str) -> None:
    """verl's `k1+` / `k3+`: the loss is k1's / k3's, the gradient ½(log π − log π_ref)²'s."""
    batch = rl_batch()
    loss = UnifiedEstimator(terms=[KLPenalty(coef=0.5, estimator=estimator)])(batch).loss
    d = (batch.ref_logprobs - batch.logprobs) * batch.mask
    value = {"k1+": -d, "k3+": d.exp() - d - 1}[estimator]
    want_value = 0.5 * (value * batch.mask).sum() / batch.mask.sum()
    want_gradient_of = 0.5 * (0.5 * d**2 * batch.mask).sum() / batch.mask.sum()
    g_got = torch.autograd.grad(loss, batch.logprobs)[0]
    g_want = torch.autograd.grad(want_gradient_of, batch.logprobs)[0]
    assert abs(float(loss) - float(want_value)) < 1e-12 and rel_error(g_got, g_want) < 1e-12
    plain = UnifiedEstimator(terms=[KLPenalty(coef=0.5, estimator=estimator[:2])])(batch).loss
    g_plain = torch.autograd.grad(plain, batch.logprobs)[0]
    assert rel_error(g_plain, g_want) > 1e-3  # the plain estimator's gradient is another one
    with pytest.raises(ParameterError, match="choose one"):
        KLPenalty(estimator=estimator, importance_weighted=True)
    grpo = algorithms.get("grpo", kl_coef=0.1, kl_estimator=estimator)
    assert grpo.terms[-1].estimator == estimator


@pytest.mark.parametrize("normalization", ["sum", "seq_mean", "token_mean_batch"])
def test_nll_normalizations(normalization: str) -> None:
    batch = pair_batch()
    loss = UnifiedEstimator(terms=[NLL(coef=2.0, normalization=normalization, beta=0.5)])(
        batch
    ).loss
    chosen = batch.roles == int(Role.CHOSEN)
    lp, m = batch.logprobs[chosen], batch.mask[chosen]
    nll = {
        "sum": -(lp * m).sum(-1).mean(),
        "seq_mean": (-(lp * m).sum(-1) / m.sum(-1)).mean(),
        "token_mean_batch": -(lp * m).sum() / m.sum(),
    }[normalization]
    assert abs(float(loss) - 2.0 * 0.5 * float(nll)) < 1e-12


def test_rpo_weight_equals_dpo_plus_nll_regularizer() -> None:
    """The rpo advantage and 'dpo + nll(sum, β-scaled)' are two spellings of official RPO."""
    batch = pair_batch()
    a = algorithms.get("rpo", beta=0.05, eta=0.3)
    b = algorithms.get("dpo", beta=0.05) + UnifiedEstimator(
        terms=[NLL(coef=0.3, rows=Rows.of(Role.CHOSEN), normalization="sum", beta=0.05)]
    )
    ga = torch.autograd.grad(a(batch).loss, batch.logprobs)[0]
    gb = torch.autograd.grad(b(batch).loss, batch.logprobs)[0]
    assert rel_error(ga, gb) < 1e-13


def test_estimators_add_and_scale() -> None:
    batch = pair_batch()
    dpo = algorithms.get("dpo")
    mixed = 0.25 * dpo + dpo.renamed("again")
    assert abs(float(mixed(batch).loss) - 1.25 * float(dpo(batch).loss)) < 1e-12
    assert {"pg/loss", "again/loss"} <= set(mixed(batch).metrics) or "dpo/loss" in mixed(
        batch
    ).metrics


def test_metrics_report_the_method() -> None:
    batch = pair_batch()
    metrics = algorithms.get("dpo")(batch).metrics
    chosen, rejected = batch.roles == 1, batch.roles == 2
    reward = 0.1 * ((batch.logprobs - batch.ref_logprobs) * batch.mask).sum(-1).detach()
    margins = reward[chosen] - reward[rejected]
    assert abs(float(metrics["dpo/margin"]) - float(margins.mean())) < 1e-12
    assert abs(float(metrics["dpo/accuracy"]) - float((margins > 0).double().mean())) < 1e-12
