"""Independent float64 closed forms of the reference-free preference losses SimPO, CPO and ORPO,
written from the papers' formulas with plain autograd, for test_gradient_identity.py."""

from __future__ import annotations

import torch.nn.functional as F
from batches import leaf, pair_batch
from torch import Tensor

from alignlib.estimator import Batch, Role


def _rows(b: Batch, role: Role) -> Tensor:
    return (b.roles == int(role)).nonzero().flatten()


def _per_row(b: Batch, mean: bool) -> tuple[Tensor, Tensor]:
    """Summed (or length-averaged) log-likelihood of the chosen and rejected rows, by pair."""
    total = (b.logprobs * b.mask).sum(-1)
    if mean:
        total = total / b.mask.sum(-1)
    return total[_rows(b, Role.CHOSEN)], total[_rows(b, Role.REJECTED)]


def chosen_token_nll(b: Batch) -> Tensor:
    """−Σ log-probs of every chosen token / number of chosen tokens (one mean over the batch)."""
    chosen = _rows(b, Role.CHOSEN)
    return -(b.logprobs[chosen] * b.mask[chosen]).sum() / b.mask[chosen].sum()


def closed_simpo(b: Batch, beta: float = 2.0, gamma: float = 1.0, alpha: float = 0.0) -> Tensor:
    avg_w, avg_l = _per_row(b, mean=True)
    return -F.logsigmoid(beta * (avg_w - avg_l) - gamma).mean() + alpha * chosen_token_nll(b)


def closed_cpo(b: Batch, beta: float = 0.1, alpha: float = 1.0) -> Tensor:
    sum_w, sum_l = _per_row(b, mean=False)
    return -F.logsigmoid(beta * (sum_w - sum_l)).mean() + alpha * chosen_token_nll(b)


def closed_orpo(b: Batch, lam: float = 0.1) -> Tensor:
    avg_w, avg_l = _per_row(b, mean=True)
    p_w, p_l = avg_w.exp(), avg_l.exp()
    odds_ratio = (p_w / (1 - p_w)) / (p_l / (1 - p_l))
    return chosen_token_nll(b) - lam * F.logsigmoid(odds_ratio.log()).mean()


def likely_pairs(seed: int = 0) -> Batch:
    """Pairs whose average token probability is high (0.6–0.99), where ORPO's odds differ most
    from the probabilities themselves (1/(1 − P) far from 1)."""
    b = pair_batch(seed=seed)
    return b.replace(logprobs=leaf(b.logprobs.detach() * 0.03))
