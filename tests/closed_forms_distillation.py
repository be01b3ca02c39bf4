"""Float64 closed forms of on-policy distillation (the ``opd`` preset), written from the
formulas with explicit loops over rows and tokens: Â_t = log π_T(y_t) − log π_old(y_t), or its
sum over tokens t..end (return to go), times TRL IW-OPD's prefix weight; loss −Σ Â_t·s_t over the
batch's completion tokens / their count, s = log π (or π/π_old)."""

from __future__ import annotations

import torch
from batches import rl_batch
from torch import Tensor

from alignlib.estimator import Batch


def closed_opd(
    b: Batch, return_to_go: bool = False, iw_gamma: float = 0.0, importance: bool = False
) -> Tensor:
    total = torch.zeros((), dtype=b.logprobs.dtype)
    for i in range(b.logprobs.shape[0]):
        tokens = [t for t in range(b.logprobs.shape[1]) if b.mask[i, t] > 0]
        d = {t: float(b.ref_logprobs[i, t] - b.old_logprobs[i, t]) for t in tokens}
        magnitude = sum(abs(v) for v in d.values())
        seen = 0.0
        for t in tokens:
            adv = sum(d[u] for u in tokens if u >= t) if return_to_go else d[t]
            if iw_gamma:
                adv *= 1 + iw_gamma * (1 - seen / max(magnitude, 1e-8))
            seen += abs(d[t])
            lp = b.logprobs[i, t]
            score = torch.exp(lp - b.old_logprobs[i, t]) if importance else lp
            total = total - adv * score
    return total / b.mask.sum()


def _samples(seed: int = 0) -> Batch:
    return rl_batch(num_groups=3, group_size=3, width=10, seed=seed, spread=0.5)


CASES = {
    "opd": (_samples, closed_opd, {}),
    "opd_return_to_go": (
        _samples,
        lambda b: closed_opd(b, return_to_go=True),
        {"return_to_go": True},
    ),
    "opd_iw": (_samples, lambda b: closed_opd(b, iw_gamma=0.5), {"iw_gamma": 0.5}),
    "opd_importance": (
        _samples,
        lambda b: closed_opd(b, importance=True, iw_gamma=0.3, return_to_go=True),
        {"reference": "old", "iw_gamma": 0.3, "return_to_go": True},
    ),
}

VARIANTS = {
    "opd_return_to_go": "opd",
    "opd_iw": "opd",
    "opd_importance": "opd",
}
