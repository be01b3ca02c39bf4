"""Per-token log-probs and entropy of a causal LM; no [T, V] logits tensor outlives its chunk.

Position t of the output scores token t+1 of the input (the usual shift); the returned tensors
are right-aligned with ``input_ids[:, 1:]`` and padded with zeros at position 0 so that they
have the same [B, T] shape as the inputs and the completion mask.

The LM head (a [hidden, V] matmul plus a log-softmax over V per position) can be skipped on the
positions nobody reads: ``first_scored_position`` leaves everything before it at 0. Callers pass
``first_masked_position(mask)`` so prompt tokens, whose log-probs the loss masks out, cost only
the decoder forward.

A plain ``nn.Linear`` head runs in :class:`LinearLogprobEntropy`, which keeps only per-position
values for the backward and recomputes each chunk's logits there; other heads (LoRA-wrapped,
hooked) take the per-chunk module path, which keeps each chunk's fp32 logits for the backward.
:func:`head_logprobs` picks between them; the packed (padding-free) forward in
``alignlib.trainer.packing`` runs the same head on exactly the scored positions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def _chunk_logprobs(
    hidden: Tensor, head: nn.Module, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    logits = head(hidden)  # [B, c, V] only for this chunk (bf16 under bf16 autocast)
    # The softmax math in at least fp32 (bf16 log-softmax is too coarse; a float64 model keeps
    # float64), with autocast off: it would run LogprobEntropy's matmul in bf16 again.
    with torch.autocast(logits.device.type, enabled=False):
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
        return LogprobEntropy.apply(logits, targets)


class LogprobEntropy(torch.autograd.Function):
    """(log softmax(z)[y], entropy of softmax(z)) over the last axis, with a hand-written backward.

    Autograd through the plain formulas keeps the probabilities and several [B, c, V]
    intermediates alive until backward; this keeps only the logits and recomputes the rest:
        ∂ log p_y / ∂z = onehot(y) − p,      ∂H / ∂z = −p ⊙ (log p + H).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, logits: Tensor, targets: Tensor) -> Any:
        logsumexp = torch.logsumexp(logits, dim=-1)
        chosen = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logsumexp
        probs = torch.exp(logits - logsumexp.unsqueeze(-1))
        # Σ p·z as a batched dot product: no [B, c, V] product tensor.
        expected = (probs.unsqueeze(-2) @ logits.unsqueeze(-1)).reshape(logsumexp.shape)
        entropy = logsumexp - expected
        ctx.save_for_backward(logits, targets, logsumexp, entropy)
        return chosen, entropy

    @staticmethod
    def backward(ctx: Any, grad_chosen: Tensor, grad_entropy: Tensor) -> Any:
        logits, targets, logsumexp, entropy = ctx.saved_tensors
        logp = logits - logsumexp.unsqueeze(-1)
        probs = logp.exp()
        # −g_H (log p + H) − g_y, times p; then + g_y on the target: two [B, c, V] buffers in all.
        coef = logp.add_(entropy.unsqueeze(-1)).mul_(-grad_entropy.unsqueeze(-1))
        grad = probs.mul_(coef.sub_(grad_chosen.unsqueeze(-1)))
        grad.scatter_add_(-1, targets.unsqueeze(-1), grad_chosen.unsqueeze(-1))
        return grad, None


def first_masked_position(mask: Tensor) -> int:
    """First column where any row of the [B, T] ``mask`` is nonzero: the largest
    ``first_scored_position`` that still computes every position the mask selects.

    An all-zero mask gives 0 (compute everything, as without skipping), so a loss built on it
    still has an autograd graph to call ``backward`` on.
    """
    columns = mask.ne(0).any(dim=0).nonzero()
    return int(columns[0]) if columns.numel() else 0


def is_plain_linear(head: nn.Module) -> bool:
    """Whether ``head`` is exactly ``nn.Linear`` with no hooks, so that reading its weight and
    bias computes what calling it would. Subclasses (quantized linears), peft's LoRA layers and
    modules with (accelerate's offload) hooks do more than ``x @ W.T + b``."""
    return type(head) is nn.Linear and not head._forward_hooks and not head._forward_pre_hooks


def matmul_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype ``head(hidden)`` would run its matmul in: autocast's for the eligible float
    types (as autocast does, float64 is never cast), else the weight's."""
    device = hidden.device.type
    eligible = {torch.float32, torch.float16, torch.bfloat16}
    if torch.is_autocast_enabled(device) and {hidden.dtype, weight.dtype} <= eligible:
        return torch.get_autocast_dtype(device)
    return weight.dtype


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


FLOOR_FROM_BYTES = 256 * 2**20
"""The memory-floor path (nothing [T, V] saved) runs when the micro-batch's fp32 logits would
take at least this much; below it the chunked path, which saves each chunk's logits, is the
faster one on a CPU (measured on SmolLM2's head: 1.15x faster with a frozen head) and its
memory is small anyway."""


def _logits_bytes(hidden: Tensor, head: nn.Linear) -> int:
    return hidden.shape[0] * hidden.shape[1] * head.weight.shape[0] * 4


def _fused_head(
    hidden: Tensor, head: nn.Linear, targets: Tensor, rows: int, with_entropy: bool, temp: float
) -> tuple[Tensor, Tensor]:
    """[B, n] log-probs and entropies of a plain linear head through LinearLogprobEntropy."""
    batch, n, width = hidden.shape
    bias = head.bias
    # With a frozen head, the backward needs only d/dhidden: fused into the forward.
    frozen = not head.weight.requires_grad and (bias is None or not bias.requires_grad)
    fuse = torch.is_grad_enabled() and hidden.requires_grad and frozen
    chosen, entropy = LinearLogprobEntropy.apply(
        hidden.reshape(batch * n, width),
        head.weight,
        bias,
        targets.reshape(batch * n),
        temp,
        rows,
        with_entropy,
        matmul_dtype(hidden, head.weight),
        fuse,
    )
    entropy = entropy.reshape(batch, n) if with_entropy else chosen.new_zeros(batch, n)
    return chosen.reshape(batch, n), entropy


def _chunked_head(
    hidden: Tensor,
    head: nn.Module,
    targets: Tensor,
    chunk_size: int,
    with_entropy: bool,
    temp: float,
) -> tuple[Tensor, Tensor]:
    """The per-chunk path for heads that must be called as modules."""
    logps, entropies = [], []
    for start in range(0, hidden.shape[1], chunk_size):
        stop = start + chunk_size
        lp, ent = _chunk_logprobs(hidden[:, start:stop], head, targets[:, start:stop], temp)
        logps.append(lp)
        entropies.append(ent if with_entropy else ent.detach())
    return torch.cat(logps, dim=1), torch.cat(entropies, dim=1)


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    chunk_size: int = 256,
    with_entropy: bool = False,
    temperature: float = 1.0,
    first_scored_position: int = 0,
) -> tuple[Tensor, Tensor | None]:
    """(log π(x_t | x_<t), entropy) for every position t ≥ 1, shape [B, T] (column 0 is 0).

    The LM head runs on ``chunk_size`` positions (of every row) at a time, so peak memory holds
    one [B, chunk, V] block of logits instead of [B, T, V], and (for a plain linear head) the
    backward recomputes each block instead of keeping it.

    Args:
        first_scored_position: Output positions t < this are not computed and are returned
            as 0 (log-probs and entropy): the LM head only runs from here on. Pass the first
            column of the completion mask (``first_masked_position``) to skip the prompt.
            0 or 1 computes every position; T or more computes none.
    """
    if first_scored_position < 0:
        raise ValueError(
            f"token_logprobs: first_scored_position={first_scored_position} must be >= 0"
        )
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    hidden = base(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    # Output position t reads hidden[t - 1] and scores input_ids[t]; column 0 is never scored.
    skipped = min(max(first_scored_position, 1), input_ids.shape[1])
    hidden, targets = hidden[:, skipped - 1 : -1], input_ids[:, skipped:]
    dtype = torch.promote_types(hidden.dtype, torch.float32)  # that of the chunks' outputs
    pad = hidden.new_zeros(input_ids.shape[0], skipped, dtype=dtype)
    if hidden.shape[1] == 0:
        logps = ents = pad[:, :0]
    else:
        head = model.get_output_embeddings()
        logps, ents = head_logprobs(hidden, head, targets, chunk_size, with_entropy, temperature)
    logprobs = torch.cat([pad, logps.to(dtype)], dim=1)
    entropy = torch.cat([pad, ents.to(dtype)], dim=1) if with_entropy else None
    return logprobs, entropy


def head_logprobs(
    hidden: Tensor,
    head: nn.Module,
    targets: Tensor,
    chunk_size: int,
    with_entropy: bool,
    temp: float,
) -> tuple[Tensor, Tensor]:
    """[B, n] log-probs and entropies of the [B, n, hidden] states: the memory-floor path for
    a plain linear head with large logits, else the per-chunk module path."""
    if is_plain_linear(head) and _logits_bytes(hidden, head) >= FLOOR_FROM_BYTES:
        rows = chunk_size * hidden.shape[0]
        return _fused_head(hidden, head, targets, rows, with_entropy, temp)
    return _chunked_head(hidden, head, targets, chunk_size, with_entropy, temp)
