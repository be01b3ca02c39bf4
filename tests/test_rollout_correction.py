"""Rollout correction (TIS / MIS): float64 gradient identity against closed forms written here,
on batches whose ratios hit the caps and masks; metrics; micro-batch invariance; the Batch field;
the top-k/top-p kept mass that puts engine log-probs on the trainer's scale."""

from __future__ import annotations

import math

import pytest
import torch
from batches import mismatch_batch, rel_error
from closed_forms_frontier import advantages, clipped, k3, per_seq_token_mean
from test_microbatch import accumulated_grad
from torch import Tensor

from alignlib import algorithms
from alignlib.estimator import (
    Batch,
    EstimatorInputError,
    RegistryError,
    Role,
    RolloutCorrection,
    kept_log_mass,
    rollout_correction,
)
from alignlib.estimator.registry import ParameterError

BOUNDS = {"geometric_mask": (0.9, 1.1)}


def expected_weights(b: Batch, mode: str, cap: float = 2.0) -> Tensor:
    """[R, T] weights by the formulas of METHODS.md §3b, row by row (1 on DEMO rows)."""
    low, high = BOUNDS.get(mode, (1 / cap, cap))
    w = torch.ones_like(b.logprobs)
    for i in range(b.num_rows):
        if int(b.roles[i]) != int(Role.SAMPLE):
            continue
        on = b.mask[i] > 0
        log_r = (b.old_logprobs[i] - b.behaviour_logprobs[i])[on]
        r = torch.exp(log_r)
        seq, geo = torch.exp(log_r.sum()), torch.exp(log_r.mean())
        w[i, on] = {
            "token_truncate": torch.minimum(r, torch.tensor(cap, dtype=r.dtype)),
            "token_mask": r * ((r >= low) & (r <= high)),
            "sequence_truncate": torch.clamp(seq, max=cap).expand_as(r),
            "sequence_mask": (seq * ((seq >= low) & (seq <= high))).expand_as(r),
            "geometric_mask": ((geo >= low) & (geo <= high)).to(r.dtype).expand_as(r),
        }[mode]
    return w


def closed_grpo_corrected(b: Batch, w: Tensor, beta: float = 0.0, reject: bool = False) -> Tensor:
    """GRPO (+ k3 KL, never weighted) with the policy loss of each token multiplied by w."""
    ratio = torch.exp(b.logprobs - b.old_logprobs)
    per_token = clipped(ratio, advantages(b).unsqueeze(-1), 0.8, 1.2) * w + beta * k3(b)
    if not reject:
        return per_seq_token_mean(per_token, b.mask)
    m = b.mask * (w != 0)
    rows = m.sum(-1) > 0  # a fully rejected row counts in no mean (METHODS.md §1)
    return ((per_token * m).sum(-1)[rows] / m.sum(-1)[rows]).mean()


def corrected(name: str, mode: str, **params: object):
    low, high = BOUNDS.get(mode, (None, None))
    correction = RolloutCorrection(mode=mode, lower=low, upper=high)
    return algorithms.get(name, **params).with_rollout_correction(correction)


def check_identity(estimator, batch: Batch, reference: Tensor) -> None:
    got = torch.autograd.grad(estimator(batch).loss, batch.logprobs)[0]
    want = torch.autograd.grad(reference, batch.logprobs)[0]
    assert rel_error(got, want) < 1e-10
    assert abs(float(estimator(batch).loss) - float(reference)) < 1e-12


MODES = ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "geometric_mask"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(3))
def test_correction_gradient_equals_closed_form(mode: str, seed: int) -> None:
    b = mismatch_batch(seed=seed)
    w = expected_weights(b, mode)
    sample = (b.roles == int(Role.SAMPLE)).unsqueeze(-1) & (b.mask > 0)
    # The batch hits the mode: some corrected tokens changed weight, some kept it, and at least
    # one is neither 0 nor 1 for the modes that reweight.
    r = expected_weights(b, "token_mask", cap=1e9)
    if mode.endswith("mask"):
        assert bool((w[sample] == 0).any()) and bool((w[sample] != 0).any())
    else:
        assert bool((w[sample] == 2.0).any()) and bool((w[sample] < 2.0).any())
    assert bool((r[sample] != 1).any())
    check_identity(corrected("grpo", mode, kl_coef=0.04), b, closed_grpo_corrected(b, w, 0.04))


@pytest.mark.parametrize("mode", ["token_mask", "sequence_mask", "geometric_mask"])
def test_rejection_removes_masked_tokens_from_the_denominator(mode: str) -> None:
    b = mismatch_batch()
    low, high = BOUNDS.get(mode, (None, None))
    correction = RolloutCorrection(mode=mode, lower=low, upper=high, rejection=True)
    estimator = algorithms.get("grpo").with_rollout_correction(correction)
    w = expected_weights(b, mode)
    check_identity(estimator, b, closed_grpo_corrected(b, w, reject=True))
    assert float(estimator(b).metrics["grpo/rollout_rejected_frac"]) > 0
    kept = closed_grpo_corrected(b, w, reject=False)
    assert abs(float(estimator(b).loss) - float(kept)) > 1e-6


def test_gspo_token_form_takes_token_weights_as_verl() -> None:
    b = mismatch_batch()
    w = expected_weights(b, "token_truncate")
    m = b.mask
    log_s = ((b.logprobs - b.old_logprobs) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True)
    s_tok = torch.exp(log_s.detach() + b.logprobs - b.logprobs.detach())
    loss = clipped(s_tok, advantages(b).unsqueeze(-1), 1 - 3e-4, 1 + 4e-4) * w
    check_identity(corrected("gspo", "token_truncate"), b, per_seq_token_mean(loss, m))


def test_sequence_units_take_sequence_weights_and_refuse_token_ones() -> None:
    b = mismatch_batch()
    w = expected_weights(b, "sequence_mask")[:, 2]  # one weight per row (column 2 is valid)
    m = b.mask
    s = torch.exp(((b.logprobs - b.old_logprobs) * m).sum(-1) / m.sum(-1))
    reference = (clipped(s, advantages(b), 1 - 3e-4, 1 + 4e-4) * w).mean()
    check_identity(corrected("gspo", "sequence_mask", level="sequence"), b, reference)
    with pytest.raises(ValueError, match="one unit per sequence"):
        corrected("gspo", "token_truncate", level="sequence")(b)


@pytest.mark.parametrize("name", ["cispo", "sapo", "dapo", "luffy", "hpt"])
def test_every_online_preset_takes_the_correction(name: str) -> None:
    b = mismatch_batch()
    plain = algorithms.get(name)
    fixed = plain.with_rollout_correction(RolloutCorrection())
    extra = {"entropy": b.entropy}
    b = b.replace(**extra)
    g_plain = torch.autograd.grad(plain(b).loss, b.logprobs)[0]
    g_fixed = torch.autograd.grad(fixed(b).loss, b.logprobs)[0]
    assert rel_error(g_fixed, g_plain) > 1e-3
    assert any(key.endswith("rollout_ratio_mean") for key in fixed(b).metrics)


def test_metrics() -> None:
    b = mismatch_batch()
    out = corrected("grpo", "token_mask")(b).metrics
    on = (b.roles == int(Role.SAMPLE)).unsqueeze(-1) & (b.mask > 0)
    log_r = (b.old_logprobs - b.behaviour_logprobs)[on]
    r = log_r.exp()
    assert float(out["grpo/rollout_ratio_mean"]) == pytest.approx(float(r.mean()), rel=1e-12)
    assert float(out["grpo/rollout_ratio_max"]) == pytest.approx(float(r.max()), rel=1e-12)
    masked = ((r < 0.5) | (r > 2)).to(r.dtype).mean()
    assert float(out["grpo/rollout_masked_frac"]) == pytest.approx(float(masked), rel=1e-12)
    assert float(out["grpo/rollout_kl_k1"]) == pytest.approx(float((-log_r).mean()), rel=1e-12)
    k3_value = (r - 1 - log_r).mean()
    assert float(out["grpo/rollout_kl_k3"]) == pytest.approx(float(k3_value), rel=1e-12)
    tis = corrected("grpo", "tis")(b).metrics
    assert float(tis["grpo/rollout_truncated_frac"]) == pytest.approx(
        float((r > 2).mean(dtype=r.dtype)), rel=1e-12
    )


@pytest.mark.parametrize("mode", MODES)
def test_correction_is_microbatch_invariant(mode: str) -> None:
    b = mismatch_batch()
    for rejection in (False, True) if mode.endswith("mask") else (False,):
        low, high = BOUNDS.get(mode, (None, None))
        c = RolloutCorrection(mode=mode, lower=low, upper=high, rejection=rejection)
        est = algorithms.get("grpo").with_rollout_correction(c)
        whole, split = accumulated_grad(est, b, 1), accumulated_grad(est, b, 4)
        assert rel_error(split, whole) < 1e-12


def test_missing_behaviour_logprobs() -> None:
    b = mismatch_batch().replace(behaviour_logprobs=None)
    with pytest.raises(EstimatorInputError, match="behaviour_logprobs"):
        corrected("grpo", "tis")(b)
    optional = algorithms.get("grpo").with_rollout_correction(RolloutCorrection(required=False))
    plain = algorithms.get("grpo")
    assert float(optional(b).loss) == float(plain(b).loss)


def test_batch_carries_behaviour_logprobs() -> None:
    b = mismatch_batch()
    assert torch.equal(
        b.select(torch.tensor([1, 3])).behaviour_logprobs, b.behaviour_logprobs[[1, 3]]
    )
    assert b.narrow(5).behaviour_logprobs.shape == (b.num_rows, 5)
    assert b.to("cpu").behaviour_logprobs is not None
    assert all(m.behaviour_logprobs is not None for m in b.split(3))
    with pytest.raises(ValueError, match="behaviour_logprobs"):
        b.replace(behaviour_logprobs=torch.zeros(2, 2))


def test_config_shape_and_validation() -> None:
    c = rollout_correction({"mode": "mis_sequence", "cap": 3.0})
    assert c is not None and c.mode == "sequence_mask" and c.bounds == (1 / 3, 3.0)
    assert rollout_correction({"mode": "tis"}).bounds == (None, 2.0)
    assert rollout_correction(None) is None
    with pytest.raises(RegistryError, match="did you mean 'upper'"):
        rollout_correction({"mode": "tis", "uper": 2})
    with pytest.raises(ParameterError, match="mode"):
        RolloutCorrection(mode="token")
    with pytest.raises(ParameterError, match="rejection"):
        RolloutCorrection(mode="tis", rejection=True)
    with pytest.raises(ParameterError, match="lower"):
        RolloutCorrection(mode="token_mask", lower=3.0, upper=2.0)
    assert algorithms.get("grpo").with_rollout_correction(None).terms[0].correction is None


@pytest.mark.parametrize(
    ("top_k", "top_p", "temperature", "min_p"),
    [
        (0, 0.9, 1.0, 0.0),
        (5, 1.0, 0.7, 0.0),
        (8, 0.8, 1.3, 0.0),
        (0, 1.0, 1.0, 0.05),
        (0, 0.95, 1.3, 0.05),  # here min-p before top-p (vLLM's order) changes what top-p keeps
    ],
)
def test_kept_log_mass_matches_transformers_warpers(
    top_k: int, top_p: float, temperature: float, min_p: float
) -> None:
    """processed log-prob (the engines' default) + log S = the tempered full-vocabulary one."""
    from transformers import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(6, 40, generator=gen)
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if min_p:
        scores = MinPLogitsWarper(min_p)(None, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    processed = torch.log_softmax(scores, -1)
    full = torch.log_softmax(logits / temperature, -1)
    token = processed.argmax(-1, keepdim=True)  # any kept token
    log_s = kept_log_mass(logits, temperature, top_k, top_p, min_p)
    got = processed.gather(1, token)[:, 0] + log_s
    assert torch.allclose(got, full.gather(1, token)[:, 0], atol=1e-5)
    assert bool((log_s < 0).all()) and bool((log_s > math.log(1e-6)).all())
