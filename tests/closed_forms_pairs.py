"""Independent float64 closed forms of SimPO, CPO, ORPO (reference-free, paired) and KTO
(unpaired), written from the papers' formulas with plain autograd, for
test_gradient_identity.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from batches import leaf, logprob_like, pair_batch, ragged_mask
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


def prompted_pairs(seed: int = 0, prompt: int = 4) -> Batch:
    """Pairs whose completions start after a ``prompt``-token prompt, with the prompt's scored
    tokens (all but its first) in ``prompt_mask``."""
    b = pair_batch(seed=seed)
    gen = torch.Generator().manual_seed(seed + 50)
    mask = ragged_mask(b.num_rows, b.width, gen, prompt=prompt)
    prompt_mask = torch.zeros_like(mask)
    prompt_mask[:, 1:prompt] = 1
    return b.replace(mask=mask, prompt_mask=prompt_mask)


def closed_orpo_with_prompt(b: Batch, lam: float = 0.1) -> Tensor:
    """The released code's ORPO: the NLL over every scored token of the chosen rows, prompt
    included; the odds ratio over the responses."""
    chosen = _rows(b, Role.CHOSEN)
    tokens = (b.mask + b.prompt_mask)[chosen]
    nll = -(b.logprobs[chosen] * tokens).sum() / tokens.sum()
    return nll + (closed_orpo(b, lam) - chosen_token_nll(b))


def likely_pairs(seed: int = 0) -> Batch:
    """Pairs whose average token probability is high (0.6–0.99), where ORPO's odds differ most
    from the probabilities themselves (1/(1 − P) far from 1)."""
    b = pair_batch(seed=seed)
    return b.replace(logprobs=leaf(b.logprobs.detach() * 0.03))


def kto_batch(seed: int = 0, examples: int = 7, width: int = 9, kl_shift: float = 0.4) -> Batch:
    """KTO rows: ``examples`` completions labelled desirable (CHOSEN) or not (REJECTED), then
    one KL row per example; the KL rows' log-probs sit ``kl_shift`` above the reference's on
    average per token (> 0: z₀ > 0; < 0: z₀ clamped to 0)."""
    gen = torch.Generator().manual_seed(seed)
    rows = 2 * examples
    ref = logprob_like(rows, width, gen) * 2
    policy = ref + 0.5 * torch.randn(rows, width, generator=gen, dtype=torch.float64)
    policy[examples:] += kl_shift
    labels = torch.randint(0, 2, (examples,), generator=gen).bool()
    labels[:2] = torch.tensor([True, False])  # both kinds always present
    main = torch.where(labels, int(Role.CHOSEN), int(Role.REJECTED))
    return Batch(
        logprobs=leaf(policy),
        mask=ragged_mask(rows, width, gen),
        ref_logprobs=ref,
        roles=torch.cat([main, torch.full((examples,), int(Role.KL))]),
        pair_ids=torch.arange(examples).repeat(2),
    )


def closed_kto(b: Batch, beta: float = 0.1, w_d: float = 1.0, w_u: float = 1.0) -> Tensor:
    """Mean over the examples of λ_D(1 − σ(β(r − z₀))) or λ_U(1 − σ(β(z₀ − r))); z₀ from the
    KL rows, no gradient, at least 0."""
    r = ((b.logprobs - b.ref_logprobs) * b.mask).sum(-1)
    z0 = torch.clamp(r[_rows(b, Role.KL)].mean(), min=0).detach()
    good, bad = r[_rows(b, Role.CHOSEN)], r[_rows(b, Role.REJECTED)]
    losses = torch.cat(
        [
            w_d * (1 - torch.sigmoid(beta * (good - z0))),
            w_u * (1 - torch.sigmoid(beta * (z0 - bad))),
        ]
    )
    return losses.mean()


def unpaired_batch(seed: int = 0) -> Batch:
    """KTO rows without KL rows (what the data builds for APO-zero-unpaired): each example's
    completion, desirable (CHOSEN) or not (REJECTED), one per pair id."""
    b = kto_batch(seed)
    main = (b.role_codes() != int(Role.KL)).nonzero().flatten()
    return b.select(main).replace(logprobs=leaf(b.logprobs.detach()[main]))


def closed_apo_zero_unpaired(
    b: Batch, beta: float = 0.1, w_d: float = 1.0, w_u: float = 1.0
) -> Tensor:
    """Mean over the examples of λ_D(1 − σ(β·r)) (desirable) or λ_U·σ(β·r) (undesirable),
    r = Σ_t (log π − log π_ref), written from the APO paper's Eq. 7 without a reference
    point."""
    r = ((b.logprobs - b.ref_logprobs) * b.mask).sum(-1)
    good, bad = r[_rows(b, Role.CHOSEN)], r[_rows(b, Role.REJECTED)]
    losses = torch.cat([w_d * (1 - torch.sigmoid(beta * good)), w_u * torch.sigmoid(beta * bad)])
    return losses.mean()


def score_pairs(seed: int = 0) -> Batch:
    """Reward-model rows: each row's score at its last completion token, 0 on its others."""
    b = pair_batch(seed=seed)
    last = (b.mask.cumsum(-1) == b.mask.sum(-1, keepdim=True)) & (b.mask > 0)
    scores = torch.where(last, 3 * b.logprobs.detach() + 1, torch.zeros_like(b.logprobs))
    return b.replace(logprobs=leaf(scores), ref_logprobs=None, prev_logprobs=None)


def score_pairs_with_margins(seed: int = 0) -> Batch:
    """score_pairs with a per-pair margin column (on both rows of each pair, as collated)."""
    b = score_pairs(seed)
    per_pair = torch.linspace(-1.0, 2.0, int(b.pair_ids.max()) + 1, dtype=torch.float64)
    return b.replace(margins=per_pair[b.pair_ids])


def closed_reward_model(b: Batch, margin: float = 0.0, center: float | None = None) -> Tensor:
    """Bradley-Terry: −log σ(r_w − r_l − m) averaged over pairs (+ c·mean((r_w + r_l)²)), m the
    constant plus each pair's margin column when the batch has one."""
    r_w, r_l = _per_row(b, mean=False)
    m = margin if b.margins is None else margin + b.margins[_rows(b, Role.CHOSEN)]
    loss = -F.logsigmoid(r_w - r_l - m).mean()
    return loss if center is None else loss + center * ((r_w + r_l) ** 2).mean()
