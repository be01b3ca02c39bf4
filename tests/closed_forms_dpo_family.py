"""Independent float64 closed forms of the DPO-family losses beyond sigmoid, hinge and IPO
(cDPO, f-DPO, DPO-Positive, R-DPO, robust, EXO, NCA, BCO, SPPO-hard, APO, DiscoPOP), each
written from its paper's formula as a loss of the summed log-ratios, differentiated by plain
autograd, for test_gradient_identity.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from batches import pair_batch
from torch import Tensor

from alignlib.estimator import Batch, Role


def log_ratios(b: Batch) -> tuple[Tensor, Tensor]:
    """u = Σ_t (log π − log π_ref) of the chosen and of the rejected row of each pair."""
    u = ((b.logprobs - b.ref_logprobs) * b.mask).sum(-1)
    chosen = (b.roles == int(Role.CHOSEN)).nonzero().flatten()
    rejected = (b.roles == int(Role.REJECTED)).nonzero().flatten()
    return u[chosen], u[rejected]


def closed_cdpo(b: Batch, beta: float, eps: float) -> Tensor:
    """Mitchell (2023): the DPO loss under labels flipped with probability ε."""
    u_w, u_l = log_ratios(b)
    p_w = torch.sigmoid(beta * (u_w - u_l))  # P(y_w ≻ y_l) under the implicit reward
    return -((1 - eps) * torch.log(p_w) + eps * torch.log(1 - p_w)).mean()


def f_prime(kind: str, t: Tensor, alpha: float = 0.5) -> Tensor:
    """f'(t) of the f-divergence, t = π/π_ref (Wang et al. 2024, Table 1), up to a constant."""
    if kind == "forward_kl":
        return -1 / t
    if kind == "js":
        return torch.log(2 * t / (1 + t))
    if kind == "alpha":
        return (1 - t ** (-alpha)) / alpha
    return torch.log(t)


def closed_f_dpo(b: Batch, beta: float, kind: str, alpha: float = 0.5) -> Tensor:
    u_w, u_l = log_ratios(b)
    margin = f_prime(kind, u_w.exp(), alpha) - f_prime(kind, u_l.exp(), alpha)
    return -F.logsigmoid(beta * margin).mean()


def closed_robust(b: Batch, beta: float = 0.1, eps: float = 0.1) -> Tensor:
    """Chowdhury et al. (2024), Eq. 8: ((1 − ε)ℓ(z) − εℓ(−z)) / (1 − 2ε), ℓ = −log σ."""
    u_w, u_l = log_ratios(b)
    z = beta * (u_w - u_l)
    return (((1 - eps) * -F.logsigmoid(z) - eps * -F.logsigmoid(-z)) / (1 - 2 * eps)).mean()


def closed_exo(b: Batch, beta: float = 0.1, eps: float = 1e-3) -> Tensor:
    """KL(q ‖ p) over the two responses, q = softmax(β u), p = (1 − ε, ε)."""
    u_w, u_l = log_ratios(b)
    q = torch.softmax(beta * torch.stack([u_w, u_l], -1), -1)
    p = torch.tensor([1 - eps, eps], dtype=q.dtype)
    return (q * (q.log() - p.log())).sum(-1).mean()


def closed_nca(b: Batch, beta: float = 0.01) -> Tensor:
    u_w, u_l = log_ratios(b)
    r_w, r_l = beta * u_w, beta * u_l
    return (
        -torch.log(torch.sigmoid(r_w))
        - 0.5 * torch.log(torch.sigmoid(-r_w))
        - 0.5 * torch.log(torch.sigmoid(-r_l))
    ).mean()


def closed_bco_pair(b: Batch, beta: float = 0.1) -> Tensor:
    u_w, u_l = log_ratios(b)
    return (-torch.log(torch.sigmoid(beta * u_w)) - torch.log(1 - torch.sigmoid(beta * u_l))).mean()


def closed_mpo(b: Batch, beta: float = 0.1, weights: tuple = (0.8, 0.2, 1.0)) -> Tensor:
    """Wang et al. (2024): w_p·L_DPO + w_q·L_BCO + w_g·(token-mean NLL of the chosen rows)."""
    u_w, u_l = log_ratios(b)
    preference = -F.logsigmoid(beta * (u_w - u_l)).mean()
    chosen = b.roles == int(Role.CHOSEN)
    generation = -(b.logprobs[chosen] * b.mask[chosen]).sum() / b.mask[chosen].sum()
    w_p, w_q, w_g = weights
    return w_p * preference + w_q * closed_bco_pair(b, beta) + w_g * generation


def closed_sppo_hard(b: Batch, beta: float = 1e-3) -> Tensor:
    """Wu et al. (2024), Eq. 4.7 with η = 1/β and P̂ = 1 (winner), 0 (loser)."""
    u_w, u_l = log_ratios(b)
    eta = 1 / beta
    return ((u_w - eta * (1 - 0.5)) ** 2 + (u_l - eta * (0 - 0.5)) ** 2).mean()


def closed_apo_zero(b: Batch, beta: float = 0.1) -> Tensor:
    u_w, u_l = log_ratios(b)
    return (1 - torch.sigmoid(beta * u_w) + torch.sigmoid(beta * u_l)).mean()


def closed_apo_down(b: Batch, beta: float = 0.1) -> Tensor:
    u_w, u_l = log_ratios(b)
    return (torch.sigmoid(beta * u_w) + 1 - torch.sigmoid(beta * (u_w - u_l))).mean()


def closed_discopop(b: Batch, beta: float = 0.05, tau: float = 0.05) -> Tensor:
    """Lu et al. (2024), Eq. 5: log-ratio modulated loss, logistic and exponential parts."""
    u_w, u_l = log_ratios(b)
    rho = beta * (u_w - u_l)
    mix = 1 / (1 + torch.exp(-rho / tau))
    return ((1 - mix) * torch.log1p(torch.exp(-rho)) + mix * torch.exp(-rho)).mean()


def sums(b: Batch, field: str, role: Role) -> Tensor:
    """Σ_t of ``field`` over each row of ``role``."""
    rows = (b.roles == int(role)).nonzero().flatten()
    return (getattr(b, field) * b.mask).sum(-1)[rows]


def closed_aot(b: Batch, beta: float = 0.1, eps: float = 0.0, paired: bool = True) -> Tensor:
    """Melnyk et al. (2024): the smoothed logistic loss on quantile-matched margins, through
    torch.sort's own autograd (the sorted values' gradient flows back to their rows)."""
    if paired:
        policy = sums(b, "logprobs", Role.CHOSEN) - sums(b, "logprobs", Role.REJECTED)
        reference = sums(b, "ref_logprobs", Role.CHOSEN) - sums(b, "ref_logprobs", Role.REJECTED)
        delta = torch.sort(policy).values - torch.sort(reference).values
    else:
        u_w, u_l = log_ratios(b)
        delta = torch.sort(u_w).values - torch.sort(u_l).values
    z = beta * delta
    return (-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)).mean()


def closed_dpop(b: Batch, beta: float = 0.1, lam: float = 50.0) -> Tensor:
    """Pal et al. (2024), eq. 3: DPO's margin less λ·max(0, log π_ref(y_w) − log π(y_w))."""
    u_w, u_l = log_ratios(b)
    penalty = torch.clamp(-u_w, min=0)
    return -F.logsigmoid(beta * (u_w - u_l - lam * penalty)).mean()


def closed_rdpo(b: Batch, beta: float = 0.1, alpha: float = 0.05, eps: float = 0.0) -> Tensor:
    """Park et al. (2024): the logistic loss of β(u_w − u_l) + α(|y_w| − |y_l|), |y| the
    completion's tokens (cDPO's smoothing ε on top)."""
    u_w, u_l = log_ratios(b)
    length = b.mask.sum(-1)
    chosen = (b.roles == int(Role.CHOSEN)).nonzero().flatten()
    rejected = (b.roles == int(Role.REJECTED)).nonzero().flatten()
    z = beta * (u_w - u_l) + alpha * (length[chosen] - length[rejected])
    return (-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)).mean()


def _pairs(seed: int = 0) -> Batch:
    return pair_batch(seed=seed)


# case -> (batch builder, closed form, preset overrides), merged into test_gradient_identity's
CASES = {
    "dpo_cdpo": (_pairs, lambda b: closed_cdpo(b, 0.3, 0.2), {"beta": 0.3, "label_smoothing": 0.2}),
    "dpo_forward_kl": (
        _pairs,
        lambda b: closed_f_dpo(b, 0.2, "forward_kl"),
        {"beta": 0.2, "divergence": "forward_kl"},
    ),
    "dpo_js": (_pairs, lambda b: closed_f_dpo(b, 0.5, "js"), {"beta": 0.5, "divergence": "js"}),
    "dpo_alpha": (
        _pairs,
        lambda b: closed_f_dpo(b, 0.3, "alpha", alpha=0.3),
        {"beta": 0.3, "divergence": "alpha", "divergence_alpha": 0.3},
    ),
    "dpop": (_pairs, closed_dpop, {}),
    "rdpo": (_pairs, closed_rdpo, {}),
    "rdpo_smoothed": (
        _pairs,
        lambda b: closed_rdpo(b, 0.3, 0.5, eps=0.1),
        {"beta": 0.3, "length_penalty": 0.5, "label_smoothing": 0.1},
    ),
    "dpop_gentle": (_pairs, lambda b: closed_dpop(b, 0.3, 2.0), {"beta": 0.3, "lam": 2.0}),
    "robust": (_pairs, closed_robust, {}),
    "robust_noisier": (
        _pairs,
        lambda b: closed_robust(b, 0.4, 0.3),
        {"beta": 0.4, "label_smoothing": 0.3},
    ),
    "exo_pair": (_pairs, closed_exo, {}),
    "exo_pair_wide": (
        _pairs,
        lambda b: closed_exo(b, 0.5, 0.2),
        {"beta": 0.5, "label_smoothing": 0.2},
    ),
    "nca_pair": (_pairs, closed_nca, {}),
    "nca_pair_steep": (_pairs, lambda b: closed_nca(b, 0.5), {"beta": 0.5}),
    "bco_pair": (_pairs, closed_bco_pair, {}),
    "mpo": (_pairs, closed_mpo, {}),
    "mpo_reweighted": (
        _pairs,
        lambda b: closed_mpo(b, 0.3, (1.0, 0.5, 0.1)),
        {"beta": 0.3, "preference_weight": 1.0, "quality_weight": 0.5, "generation_weight": 0.1},
    ),
    "sppo_hard": (_pairs, closed_sppo_hard, {}),
    "sppo_hard_trl": (_pairs, lambda b: closed_sppo_hard(b, 0.1), {"beta": 0.1}),
    "apo_zero": (_pairs, closed_apo_zero, {}),
    "apo_down": (_pairs, closed_apo_down, {}),
    "discopop": (_pairs, closed_discopop, {}),
    "aot": (_pairs, closed_aot, {}),
    "aot_smoothed": (
        _pairs,
        lambda b: closed_aot(b, beta=0.3, eps=0.2),
        {"beta": 0.3, "label_smoothing": 0.2},
    ),
    "aot_unpaired": (_pairs, lambda b: closed_aot(b, paired=False), {}),
    "discopop_soft_blend": (
        _pairs,
        lambda b: closed_discopop(b, beta=0.1, tau=1.0),
        {"beta": 0.1, "tau": 1.0},
    ),
}

VARIANTS = {
    "dpo_cdpo": "dpo",
    "dpo_forward_kl": "dpo",
    "dpo_js": "dpo",
    "dpo_alpha": "dpo",
    "dpop_gentle": "dpop",
    "rdpo_smoothed": "dpo",
    "robust_noisier": "robust",
    "exo_pair_wide": "exo_pair",
    "nca_pair_steep": "nca_pair",
    "sppo_hard_trl": "sppo_hard",
    "discopop_soft_blend": "discopop",
    "aot_smoothed": "aot",
    "mpo_reweighted": "mpo",
}
