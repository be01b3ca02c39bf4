"""M2PO's two forms beyond the closed forms of test_gradient_identity.py: the released code's
budget rule against its own loop on random values, what each form does on-policy (nothing),
that the global statistic does not depend on the micro-batch split while the reference's
per-micro-batch one does, which log-probs each form compares, and the preset's one-line
errors."""

from __future__ import annotations

import math

import pytest
import torch
from batches import rel_error
from closed_forms_m2po import paper_kept, stale_batch, tokens
from test_microbatch import accumulated_grad

from alignlib import algorithms
from alignlib.estimator import Batch, M2POClip
from alignlib.estimator.m2po import budget_bound


def loop_bound(squares: list[float], budget: float) -> float:
    n = len(squares)
    if sum(squares) / n <= budget:
        return math.inf
    ordered = sorted(squares)
    for k in range(n):
        if sum(min(s, ordered[k]) for s in ordered) >= budget * n:
            return 0.0 if k == 0 else math.sqrt(ordered[k - 1])
    raise AssertionError("unreachable: capping at the largest gives the full sum")


def capped_mean(squares: list[float], cap: float) -> float:
    return sum(min(s, cap) for s in squares) / len(squares)


@pytest.mark.parametrize("seed", range(6))
def test_the_budget_rule_is_the_released_loop_and_tight(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    squares = (0.4 * torch.randn(40, generator=gen, dtype=torch.float64)) ** 2
    values = squares.tolist()
    for budget in (0.01, 0.04, 0.1, 1.0):
        tau = float(budget_bound(squares, budget))
        assert tau == loop_bound(values, budget)
        if math.isinf(tau):
            assert sum(values) / len(values) <= budget
            continue
        assert capped_mean(values, tau**2) < budget or tau == 0.0
        above = [s for s in sorted(values) if s > tau**2 + 1e-15]
        assert capped_mean(values, above[0]) >= budget  # the next breakpoint would not fit


def test_both_forms_are_the_plain_policy_gradient_on_policy() -> None:
    """π = π_old = π_behaviour: nothing to mask, no harmful token, so both forms are token-mean
    −ρÂ, whose gradient is −Â∇ℓ."""
    b = stale_batch(seed=1)
    b = b.replace(old_logprobs=b.logprobs.detach(), behaviour_logprobs=b.logprobs.detach())
    plain = algorithms.get("cispo", eps_high=10.0, eps_low=1.0)(b)  # weight 1 at ρ = 1
    want = torch.autograd.grad(plain.loss, b.logprobs)[0]
    for form in ("paper", "released"):
        out = algorithms.get("m2po", form=form, threshold=1e-6)(b)
        assert rel_error(torch.autograd.grad(out.loss, b.logprobs)[0], want) < 1e-12
        dropped = out.metrics.get("m2po/m2_dropped", out.metrics.get("m2po/clipfrac"))
        assert float(dropped) == 0.0


@pytest.mark.parametrize("form", ["paper", "released"])
def test_the_global_statistic_ignores_the_micro_batch_split(form: str) -> None:
    b = stale_batch(seed=0)
    whole = accumulated_grad(algorithms.get("m2po", form=form), b, 1)
    assert rel_error(accumulated_grad(algorithms.get("m2po", form=form), b, 4), whole) < 1e-12
    per_micro = algorithms.get("m2po", form=form, scope="per_microbatch")
    assert rel_error(accumulated_grad(per_micro, b, 1), whole) < 1e-12  # one part: the same
    assert rel_error(accumulated_grad(per_micro, b, 4), whole) > 1e-4  # the reference's way


def kept_by_preset(b: Batch) -> set[tuple[int, int]]:
    keep = algorithms.get("m2po").prepare(b).prepared["0.mask0.keep"]
    return {(int(i), int(t)) for i, t in keep.nonzero().tolist()}


def test_the_paper_form_compares_with_the_engine_and_without_it_with_pi_old() -> None:
    b = stale_batch(seed=3)
    with_engine = kept_by_preset(b)
    assert with_engine == paper_kept(b, 0.04)
    by_old = kept_by_preset(b.replace(behaviour_logprobs=None))
    assert by_old == paper_kept(b.replace(behaviour_logprobs=b.old_logprobs), 0.04)
    assert by_old != with_engine and 0 < len(by_old) < len(tokens(b))


def test_the_released_form_clips_only_outside_the_budget() -> None:
    b = stale_batch(seed=0)
    loose = algorithms.get("m2po", form="released", threshold=10.0)(b)
    assert float(loose.metrics["m2po/clipfrac"]) == 0.0  # within the budget: no clip at all
    tight = algorithms.get("m2po", form="released", threshold=1e-8)(b)
    assert float(tight.metrics["m2po/clipfrac"]) > 0.2  # τ ≈ 0: every harmful token clipped


def test_global_scope_asks_for_the_present_policy_and_per_microbatch_does_not() -> None:
    for form in ("paper", "released"):
        assert algorithms.get("m2po", form=form).reads_present_logprobs()
        assert not algorithms.get(
            "m2po", form=form, scope="per_microbatch"
        ).reads_present_logprobs()


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"min_eps_low": 0.3}, "form: released"),
        ({"form": "clipped"}, "'paper' or 'released'"),
        ({"threshold": 0.0}, "threshold"),
        ({"form": "released", "scope": "rows"}, "scope"),
    ],
)
def test_bad_options_are_one_line(params: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words) as caught:
        algorithms.get("m2po", **params)
    assert "\n" not in str(caught.value)


def test_the_clip_refuses_a_bad_floor() -> None:
    with pytest.raises(ValueError, match="min_eps_low"):
        M2POClip(min_eps_low=1.5)
