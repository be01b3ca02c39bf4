"""BVPO's ``alpha: auto``: α set before every mini-batch to the paper's MSE-optimal mixing
weight α* = (B − C)/(A + B − 2C) (:func:`optimal_alpha`), with A, B, C estimated online from the
two estimators' own parameter gradients on the mini-batches trained so far
(:class:`GradientMoments`). How, and where it departs from the paper's definitions:

- the estimator sees log-probs, not weights; the autograd graph of those log-probs leads to the
  trainable parameters (:func:`trainable_parameters`), so each side takes its exact gradient
  with ``torch.autograd.grad`` (about one extra backward pass per micro-batch) and the step
  then applies α·g_t + (1 − α)·g_e without a further pass (:class:`MixedSide`);
- a mini-batch's g_t, g_e (summed over its micro-batches) become one sample when the next
  mini-batch is prepared, so α for mini-batch k uses mini-batches < k (0.5 for the first two);
- the biases are relative to the true marginal gradient, which is intractable (the paper's
  premise): the trace estimator's mean stands in for it (b_t = 0);
- moments are exponentially weighted (``auto_decay``), as the gradients drift in training; they
  are not saved in checkpoints (a resumed run measures again from 0.5) and need one process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from alignlib.estimator import Batch, PolicyGradientTerm, Rows, Term, TermOutput, UnifiedEstimator
from alignlib.estimator.masks import RowFilter
from alignlib.estimator.rollout_correction import RolloutCorrection

PAPER_ALPHA = 0.5
"""The paper's fixed α, also used by ``alpha="auto"`` until two mini-batches are measured."""

Gradient = dict[nn.Parameter, Tensor]
"""One gradient: a tensor per trainable parameter (a parameter it does not reach is zero)."""


def optimal_alpha(a: float, b: float, c: float) -> float:
    """The MSE-optimal mixing weight α* = (B − C)/(A + B − 2C), clipped to [0, 1].

    A = ‖b_t‖² + tr Σ_t, B = ‖b_e‖² + tr Σ_e, C = ⟨b_t, b_e⟩ + tr Σ_te: biases and
    (co)variances of the trace and empty-trace gradient estimators.
    """
    denominator = a + b - 2 * c
    if denominator <= 0:
        return PAPER_ALPHA
    return min(max((b - c) / denominator, 0.0), 1.0)


def _dot(x: Gradient, y: Gradient) -> float:
    """⟨x, y⟩ over every parameter (float64 accumulation)."""
    return sum(float((x[p].double() * y[p].double()).sum()) for p in x.keys() & y.keys())


@dataclass
class GradientMoments:
    """Exponentially weighted moments of paired samples (g_t, g_e) — the trace and empty-trace
    gradients of one mini-batch — and the A, B, C of :func:`optimal_alpha` they estimate.

    The true marginal gradient is intractable (the paper's premise), so the trace estimator's
    mean is the target: b_t = 0 and b_e = E g_e − E g_t. Then
    A = tr Σ_t, B = ‖b_e‖² + tr Σ_e, C = tr Σ_te, each estimated without bias: sample
    (co)variances with reliability weights, ‖μ_e − μ_t‖² less the variance of the two means.
    Updates are West's weighted algorithm (means and centred sums), so no large sum is
    subtracted from another. ``decay`` = 1 gives the plain sample statistics.
    """

    decay: float = 1.0
    count: int = 0
    weight: float = 0.0
    """W = Σ w_k (each older sample's weight is multiplied by ``decay`` per new one)."""
    weight_sq: float = 0.0
    """Σ w_k²."""
    mean_t: Gradient = field(default_factory=dict)
    mean_e: Gradient = field(default_factory=dict)
    scatter_t: float = 0.0
    """Σ w_k ‖g_t,k − μ_t‖²."""
    scatter_e: float = 0.0
    scatter_te: float = 0.0
    """Σ w_k ⟨g_t,k − μ_t, g_e,k − μ_e⟩."""

    def observe(self, g_t: Gradient, g_e: Gradient) -> None:
        """Add one mini-batch's pair of gradients."""
        d = self.decay
        self.count += 1
        self.weight = d * self.weight + 1.0
        self.weight_sq = d * d * self.weight_sq + 1.0
        step = 1.0 / self.weight
        delta_t = self._move(self.mean_t, g_t, step)
        delta_e = self._move(self.mean_e, g_e, step)
        # Σ w(x − μ')(y − μ') grows by δ_x·(y − μ'_y) with δ measured from the old mean.
        self.scatter_t = d * self.scatter_t + _dot(delta_t, _minus(g_t, self.mean_t))
        self.scatter_e = d * self.scatter_e + _dot(delta_e, _minus(g_e, self.mean_e))
        self.scatter_te = d * self.scatter_te + _dot(delta_t, _minus(g_e, self.mean_e))

    @staticmethod
    def _move(mean: Gradient, sample: Gradient, step: float) -> Gradient:
        """μ ← μ + step·(x − μ) in place; returns δ = x − μ_old."""
        delta = {}
        for p in mean.keys() | sample.keys():
            old = mean.get(p)
            x = sample.get(p)
            if x is None:
                x = torch.zeros_like(old)
            delta[p] = x - old if old is not None else x.clone()
            mean[p] = (old if old is not None else torch.zeros_like(x)) + step * delta[p]
        return delta

    def abc(self) -> tuple[float, float, float] | None:
        """(A, B, C) of :func:`optimal_alpha`, or None before two samples."""
        if self.count < 2:
            return None
        effective = self.weight - self.weight_sq / self.weight  # W − Σw²/W (= K − 1 undecayed)
        var_t, var_e = self.scatter_t / effective, self.scatter_e / effective
        cov_te = self.scatter_te / effective
        # E‖μ̂_e − μ̂_t‖² = ‖b_e‖² + (Σw²/W²)·tr Var(g_e − g_t)
        gap = _minus(self.mean_e, self.mean_t)
        noise = self.weight_sq / self.weight**2 * (var_t + var_e - 2 * cov_te)
        bias_sq = max(_dot(gap, gap) - noise, 0.0)
        return var_t, bias_sq + var_e, cov_te

    def alpha(self) -> float:
        """α* from the moments so far; the paper's 0.5 before two samples."""
        moments = self.abc()
        return PAPER_ALPHA if moments is None else optimal_alpha(*moments)


def _minus(x: Gradient, y: Gradient) -> Gradient:
    return {p: x[p] - y[p] if p in y else x[p] for p in x} | {p: -y[p] for p in y.keys() - x.keys()}


class AutoAlpha:
    """The α of the current mini-batch and the gradients it is being measured from.

    Shared by the three terms of an ``alpha="auto"`` estimator. A mini-batch starts with
    ``prepare`` (the trainer prepares each one before its micro-batches): the gradients the two
    sides recorded since the previous one are complete, so they become one sample of the
    moments, and α* for the new mini-batch is computed from every sample so far.
    """

    def __init__(self, decay: float) -> None:
        self.moments = GradientMoments(decay)
        self.alpha = PAPER_ALPHA
        self.pending: dict[str, Gradient] = {}

    def begin_minibatch(self) -> None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise ValueError(
                "algorithm.params.alpha: auto measures the gradients in one process; "
                "set a number (0.5 is the paper's) for a data-parallel run"
            )
        if self.pending:
            self.moments.observe(self.pending.get("trace", {}), self.pending.get("empty", {}))
            self.pending = {}
        self.alpha = self.moments.alpha()

    def share(self, side: str) -> float:
        return self.alpha if side == "trace" else 1.0 - self.alpha

    def record(self, side: str, gradient: Gradient) -> None:
        """Add a micro-batch's gradient (already normalized over the mini-batch)."""
        total = self.pending.setdefault(side, {})
        for p, g in gradient.items():
            total[p] = total[p] + g if p in total else g.detach().clone()


def trainable_parameters(output: Tensor) -> list[nn.Parameter]:
    """The parameters ``output`` depends on, from its autograd graph (the estimator sees only
    log-probs; the graph leads to the weights). Non-parameter leaves are left out."""
    found: list[nn.Parameter] = []
    seen: set[object] = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf
        if isinstance(variable, nn.Parameter):
            found.append(variable)
        stack.extend(child for child, _ in node.next_functions)
    return found


@dataclass(frozen=True)
class MixedSide(Term):
    """One side of the auto-α mixture: the DPO term on its rows, scaled by α (trace) or 1 − α
    (empty), with its own parameter gradient recorded for the moments.

    Its surrogate becomes ⟨θ, sg(scale·g)⟩ — the same gradient scale·g, so the trainer's
    backward does not repeat the pass that measured g."""

    inner: PolicyGradientTerm
    side: Literal["trace", "empty"]
    mixing: AutoAlpha
    coef: float = 1.0
    name: str = "trace"

    @property
    def rows(self) -> Rows:
        return self.inner.rows

    def requirements(self) -> dict[str, str]:
        return self.inner.requirements()

    def row_filters(self) -> list[tuple[RowFilter, Rows]]:
        return self.inner.row_filters()

    def token_filters(self) -> list[tuple[RolloutCorrection, Rows]]:
        return self.inner.token_filters()

    def prepare(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return self.inner.prepare(batch)

    def forward(self, batch: Batch, prepared: dict[str, Tensor]) -> TermOutput:
        out = self.inner.forward(batch, prepared)
        scale = self.coef * self.mixing.share(self.side)
        value = scale * out.value
        metrics = out.metrics | {"loss": value}
        if not (torch.is_grad_enabled() and out.surrogate.requires_grad):
            return TermOutput(scale * out.surrogate, value, metrics)
        params = trainable_parameters(out.surrogate)
        if not params:  # log-probs that lead to no nn.Parameter: nothing to measure
            return TermOutput(scale * out.surrogate, value, metrics)
        grads = torch.autograd.grad(out.surrogate, params, retain_graph=True, allow_unused=True)
        gradient = {p: g for p, g in zip(params, grads, strict=True) if g is not None}
        self.mixing.record(self.side, gradient)
        surrogate = _linear(gradient, scale, out.surrogate)
        return TermOutput(surrogate, value, metrics)


def _linear(gradient: Gradient, scale: float, like: Tensor) -> Tensor:
    """A scalar whose gradient is scale·g: Σ_p ⟨p, sg(scale·g_p)⟩ (its value is not used)."""
    total = like.new_zeros(())
    for p, g in gradient.items():
        total = total + (p * (scale * g).detach()).sum().to(total.dtype)
    return total


@dataclass(frozen=True)
class AlphaEstimate(Term):
    """Starts each mini-batch's α and reports it with the moments (no loss of its own)."""

    mixing: AutoAlpha
    coef: float = 1.0
    name: str = "bvpo"

    def requirements(self) -> dict[str, str]:
        return {}

    def prepare(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        self.mixing.begin_minibatch()
        values = {"alpha": self.mixing.alpha, "samples": float(self.mixing.moments.count)}
        moments = self.mixing.moments.abc()
        if moments is not None:  # A, B, C once two mini-batches are measured
            values |= dict(zip(("trace_var", "empty_mse", "cross_cov"), moments, strict=True))
        return {}, {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}

    def forward(self, batch: Batch, prepared: dict[str, Tensor]) -> TermOutput:
        zero = batch.logprobs.new_zeros(())
        return TermOutput(zero, zero, {})


def auto_mixture(trace: Term, empty: Term, decay: float) -> UnifiedEstimator:
    """α·trace + (1 − α)·empty with α re-estimated before every mini-batch (``alpha: auto``);
    ``trace`` and ``empty`` are the two DPO policy-gradient terms."""
    mixing = AutoAlpha(decay)

    def side(term: Term, name: Literal["trace", "empty"]) -> MixedSide:
        assert isinstance(term, PolicyGradientTerm)
        return MixedSide(inner=term, side=name, mixing=mixing, name=name)

    terms: Iterable[Term] = (AlphaEstimate(mixing), side(trace, "trace"), side(empty, "empty"))
    return UnifiedEstimator.from_terms(*terms)
