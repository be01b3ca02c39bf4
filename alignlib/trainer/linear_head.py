"""The LM head's log-probs and entropies without saving logits: a custom autograd function for a
plain ``nn.Linear`` head that keeps only per-position values for the backward and recomputes
each chunk's logits there (or, for a frozen head, stores d/dhidden directly).

Split from ``alignlib.trainer.logprobs``, which decides when this memory-floor path runs."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_BLOCK_ELEMENTS = 1 << 21
"""Elements of one fp32 softmax block (8 MiB): a chunk's [rows, V] logits are converted to
fp32 this many at a time, so the matmul's own output is the only chunk-sized buffer."""


def _blocks(rows: int, width: int) -> list[slice]:
    step = max(1, _BLOCK_ELEMENTS // width)
    return [slice(s, s + step) for s in range(0, rows, step)]


def _raw_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``hidden @ weight.T + bias`` in the (already cast) weight's dtype: as ``F.linear``."""
    hidden = hidden.to(weight.dtype)
    return hidden @ weight.T if bias is None else torch.addmm(bias, hidden, weight.T)


def _chunk_stats(
    raw: Tensor, targets: Tensor, temp: float, out: list[Tensor], fuse: bool
) -> Tensor | None:
    """Fill ``out`` = [logsumexp, chosen, entropy (or an empty tensor)] for one chunk.

    With ``fuse``, ``raw`` is overwritten with p, and the returned buffer (like ``raw``) holds
    p ⊙ (log p + H) when entropy is wanted: the two matrices d/dhidden is made of.
    """
    lse, chosen, entropy = out
    spread = torch.empty_like(raw) if fuse and entropy.numel() else None
    for b in _blocks(*raw.shape):
        z = raw[b].to(lse.dtype, copy=True).div_(temp)  # fresh: raw may be in acc already
        m = torch.logsumexp(z, dim=-1)
        lse[b], chosen[b] = m, z.gather(-1, targets[b, None]).squeeze(-1) - m
        if not (fuse or entropy.numel()):
            continue
        p = (z - m[:, None]).exp_()
        ent = m - (p.unsqueeze(-2) @ z.unsqueeze(-1)).reshape(m.shape)  # Σ p·z, no product
        if entropy.numel():
            entropy[b] = ent
        if fuse:
            raw[b] = p
        if spread is not None:
            spread[b] = z.sub_(m[:, None]).add_(ent[:, None]).mul_(p)
    return spread


def _grad_logits_(
    raw: Tensor, saved: list[Tensor], grads: list[Tensor | None], temp: float
) -> None:
    """Overwrite a chunk's raw logits with dL/d(raw logits), block by block in ``acc``:
    ∂ log p_y / ∂z = onehot(y) − p,  ∂H / ∂z = −p ⊙ (log p + H),  z = raw / temperature."""
    targets, lse, entropy = saved
    g_y, g_h = grads
    for b in _blocks(*raw.shape):
        logp = raw[b].to(lse.dtype, copy=True).div_(temp).sub_(lse[b, None])
        if g_h is not None:
            p = logp.exp()
            coef = logp.add_(entropy[b, None]).mul_(-g_h[b, None])
            grad = p.mul_(coef if g_y is None else coef.sub_(g_y[b, None]))
        else:
            grad = logp.exp_().mul_(-g_y[b, None])
        if g_y is not None:
            grad.scatter_add_(-1, targets[b, None], g_y[b, None])
        raw[b] = grad.div_(temp)


class LinearLogprobEntropy(torch.autograd.Function):
    """(log softmax(z)[y], entropy) with z = (hidden @ W.T + b) / temperature, over N positions,
    ``rows`` at a time; the forward keeps no logits for the backward.

    Saved for the backward: hidden, W, b (which exist anyway) and the per-position logsumexp
    and entropy; the backward recomputes each chunk's logits and turns them into d/dz in place.
    With ``fuse`` (a frozen head: only d/dhidden is needed) the forward instead stores
    d/dhidden of log p_y and of H per position ([N, hidden] each: ``(W_y − pW) / τ`` and
    ``−(p ⊙ (log p + H)) W / τ``), and the backward only weights them by the incoming grads.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        temperature: float,
        rows: int,
        with_entropy: bool,
        dtype: torch.dtype,
        fuse: bool,
    ) -> Any:
        acc = torch.promote_types(dtype, torch.float32)
        n = hidden.shape[0]
        out = [hidden.new_empty(k, dtype=acc) for k in (n, n, n if with_entropy else 0)]
        sizes = (n, out[2].numel()) if fuse else ()
        dirs = [hidden.new_empty(k, hidden.shape[1], dtype=acc) for k in sizes]
        # The fused forward with entropy holds two [rows, V] buffers: halve rows to keep one.
        step = max(1, rows // 2) if fuse and with_entropy else rows
        with torch.autocast(hidden.device.type, enabled=False):
            w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
            for start in range(0, n, step):
                c = slice(start, start + step)
                raw = _raw_logits(hidden[c], w, b)
                spread = _chunk_stats(raw, targets[c], temperature, [t[c] for t in out], fuse)
                if fuse:
                    dirs[0][c] = (weight[targets[c]].to(acc) - raw @ w).div_(temperature)
                if spread is not None:
                    dirs[1][c] = (spread @ w).to(acc).div_(-temperature)
        ctx.set_materialize_grads(False)
        if not with_entropy:
            ctx.mark_non_differentiable(out[2])
        ctx.fuse, ctx.temperature, ctx.rows, ctx.dtype = fuse, temperature, rows, dtype
        ctx.hidden_dtype = hidden.dtype
        saved = dirs if fuse else (hidden, weight, bias, targets, out[0], out[2])
        ctx.save_for_backward(*saved)
        return out[1], out[2]

    @staticmethod
    def backward(ctx: Any, g_y: Tensor | None, g_h: Tensor | None) -> Any:
        if g_y is None and g_h is None:
            return (None,) * 9
        if ctx.fuse:
            return (_fused_grad(ctx, g_y, g_h), *(None,) * 8)
        return (*_recomputed_grads(ctx, g_y, g_h), *(None,) * 6)


def _fused_grad(ctx: Any, g_y: Tensor | None, g_h: Tensor | None) -> Tensor:
    """d/dhidden from the directions the forward stored: g_y · d_y + g_H · d_H per position."""
    d_y, d_h = ctx.saved_tensors
    grad = torch.zeros_like(d_y)
    if g_y is not None:
        grad.addcmul_(d_y, g_y[:, None])
    if g_h is not None:
        grad.addcmul_(d_h, g_h[:, None])
    return grad.to(ctx.hidden_dtype)


def _recomputed_grads(
    ctx: Any, g_y: Tensor | None, g_h: Tensor | None
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(d/dhidden, d/dW, d/db), recomputing one chunk of logits at a time."""
    hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    grad_h = torch.empty_like(hidden) if need_h else None
    # In the matmul's dtype, as autocast's cached weight cast accumulates it: on CPU a mixed
    # bf16 -> fp32 add per chunk costs more than the matmul; cast once at the end instead.
    grad_w = torch.zeros_like(weight, dtype=ctx.dtype) if need_w else None
    grad_b = torch.zeros_like(bias, dtype=lse.dtype) if need_b else None
    with torch.autocast(hidden.device.type, enabled=False):
        w, b = weight.to(ctx.dtype), None if bias is None else bias.to(ctx.dtype)
        for start in range(0, hidden.shape[0], ctx.rows):
            c = slice(start, start + ctx.rows)
            h = hidden[c].to(ctx.dtype)
            raw = _raw_logits(h, w, b)
            grads = [None if g is None else g[c] for g in (g_y, g_h)]
            _grad_logits_(raw, [targets[c], lse[c], entropy[c]], grads, ctx.temperature)
            if grad_h is not None:
                grad_h[c] = raw @ w
            if grad_w is not None:
                grad_w.addmm_(raw.T, h)
            if grad_b is not None:
                grad_b += raw.sum(0, dtype=lse.dtype)
        del w, b, raw  # before the cast, which allocates the weight-sized gradient
    grad_w = None if grad_w is None else grad_w.to(weight.dtype)
    return grad_h, grad_w, None if grad_b is None else grad_b.to(bias.dtype)
