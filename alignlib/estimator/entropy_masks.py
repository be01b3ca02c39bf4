"""Forking tokens: the policy gradient on the highest-entropy tokens only (Wang et al. 2025,
"Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective RL for LLM Reasoning").

Token t's entropy H_t = −Σ_v π(v | x, y_<t) log π(v | x, y_<t) is the present policy's, at the
rollout temperature, without gradient. The reference code (a verl fork, ``entropy_top_ratio``)
keeps the k = ⌈ρN⌉ highest of the N valid tokens (``select="top_k"``) and averages the loss over
the kept tokens only (``denominator="selected"``); the paper's objective and TRL's
``top_entropy_quantile`` keep the tokens at or above the (1 − ρ)-quantile of H
(``select="quantile"``, ties all kept) and still divide by every valid token
(``denominator="all"``). Both select per micro-batch; the default ``scope="global"`` selects
once over the whole optimizer mini-batch, so the gradient does not depend on the split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from alignlib.estimator.batch import Batch, BatchError
from alignlib.estimator.cov_masks import Scope
from alignlib.estimator.masks import MASKS, Mask, UnitTerms
from alignlib.estimator.registry import check_choice, check_number
from alignlib.estimator.units import Units

Select = Literal["top_k", "quantile"]
Denominator = Literal["selected", "all"]


def kept_count(ratio: float, num_valid: int) -> int:
    """k = max(⌈ρN⌉, 1), with ρN a hair above an integer (0.2 · 15 = 3.0000000000000004) taken
    as that integer, as the reference code's ``int(ρN + 0.9999)`` does."""
    return max(1, int(ratio * num_valid + 0.9999))


def top_k_tokens(entropy: Tensor, valid: Tensor, ratio: float) -> Tensor:
    """[R, T] bool: the k = kept_count(ρ, N) valid tokens of highest entropy; among equal
    entropies the lower flat index wins (the same tokens on every device)."""
    flat_valid = valid.flatten().nonzero().flatten()
    chosen = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device)
    if flat_valid.numel():
        k = kept_count(ratio, flat_valid.numel())  # ≤ N, as ρ ≤ 1
        values = entropy.detach().flatten()[flat_valid].float()
        order = values.sort(descending=True, stable=True).indices[:k]
        chosen[flat_valid[order]] = True
    return chosen.view_as(valid)


def linear_quantile(values: Tensor, q: float) -> Tensor:
    """torch.quantile(values, q) with linear interpolation, for any number of values
    (torch.quantile refuses more than 2²⁴, fewer tokens than one large mini-batch holds)."""
    ordered = values.sort().values.double()
    position = q * (ordered.numel() - 1)
    below = int(position)
    above = min(below + 1, ordered.numel() - 1)
    return ordered[below] + (position - below) * (ordered[above] - ordered[below])


def quantile_tokens(entropy: Tensor, valid: Tensor, ratio: float) -> Tensor:
    """[R, T] bool: the valid tokens whose entropy is at least the (1 − ρ)-quantile of the valid
    tokens' entropies (all of them at ρ = 1, the highest one and its ties at ρ = 0)."""
    values = entropy.detach()[valid].float()
    if not values.numel():
        return torch.zeros_like(valid)
    threshold = linear_quantile(values, 1.0 - ratio)
    return (entropy.detach().double() >= threshold) & valid


SELECTORS = {"top_k": top_k_tokens, "quantile": quantile_tokens}


@MASKS.register("high_entropy")
@dataclass(frozen=True)
class HighEntropyTokens(Mask):
    """Only the top-ρ tokens by the present policy's entropy pass gradient (forking tokens).

    A token left out gets zero loss and gradient; with ``denominator="selected"`` it also leaves
    the term's normalizer (token-mean divides by the kept tokens), with ``"all"`` it still counts.
    Needs the token likelihood (its units are tokens)."""

    needs: ClassVar[dict[str, str]] = {
        "entropy": "the high-entropy mask selects tokens by the present policy's entropy"
    }
    token_level: ClassVar[bool] = True
    reads_present_in_prepare: ClassVar[bool] = True  # the present policy's entropy
    ratio: float = 0.2
    """ρ, the fraction of valid tokens kept (the paper's 20%)."""
    select: Select = "top_k"
    """`top_k`: the ⌈ρN⌉ highest (the reference code); `quantile`: H ≥ the (1 − ρ)-quantile, ties
    kept (the paper's threshold, TRL's)."""
    denominator: Denominator = "selected"
    """`selected`: the loss is averaged over the kept tokens (the reference code); `all`: over
    every valid token, the left-out ones adding 0 (the paper's objective, TRL's)."""
    scope: Scope = "global"
    """`global`: one selection over the optimizer mini-batch; `per_microbatch`: per forward
    pass, as both references do (needs denominator `all`: the normalizer is fixed before the
    mini-batch is split)."""

    def __post_init__(self) -> None:
        check_number("HighEntropyTokens", "ratio", self.ratio, gt=0, le=1, why="a fraction")
        check_choice("HighEntropyTokens", "select", self.select, tuple(SELECTORS))
        check_choice("HighEntropyTokens", "denominator", self.denominator, ("selected", "all"))
        check_choice("HighEntropyTokens", "scope", self.scope, ("global", "per_microbatch"))
        if self.scope == "per_microbatch" and self.denominator == "selected":
            raise ValueError(
                "HighEntropyTokens: scope 'per_microbatch' needs denominator 'all' (the kept "
                "tokens of a micro-batch are not known when the mini-batch's normalizer is "
                "fixed); use scope 'global' to divide by the kept tokens"
            )

    def selected(self, entropy: Tensor, units: Units) -> Tensor:
        """[R, T] bool: the kept tokens among ``units``' valid ones."""
        if entropy.shape != units.mask.shape:
            raise BatchError(
                "the high_entropy mask keeps single tokens: it needs the 'token' likelihood "
                f"(entropy {tuple(entropy.shape)}, units {tuple(units.mask.shape)})"
            )
        return SELECTORS[self.select](entropy, units.mask > 0, self.ratio)

    def prepare(self, batch: Batch, units: Units, adv: Tensor) -> dict[str, Tensor]:
        if batch.entropy is None:
            raise BatchError(f"batch.entropy is missing: {self.needs['entropy']}")
        if self.scope == "global":
            return {"keep": self.selected(batch.entropy, units)}
        return {"entropy": batch.entropy.detach()}

    def counted(self, prepared: dict[str, Tensor]) -> Tensor | None:
        return prepared["keep"] if self.denominator == "selected" else None

    def apply(self, units: Units, adv: Tensor, terms: UnitTerms, prepared: dict) -> UnitTerms:
        if self.scope == "global":
            keep = prepared["keep"]
        else:
            keep = self.selected(prepared["entropy"], units)
        kept = keep.to(terms.weight.dtype)
        terms.weight = terms.weight * kept
        terms.value = terms.value * kept
        terms.indicators["entropy_kept"] = kept
        return terms
