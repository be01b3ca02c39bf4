"""Per-token log-probs and entropy of a causal LM; no [T, V] logits tensor outlives its chunk.

Position t of the output scores token t+1 of the input (the usual shift); the returned tensors
are right-aligned with ``input_ids[:, 1:]`` and padded with zeros at position 0 so that they
have the same [B, T] shape as the inputs and the completion mask.

The LM head (a [hidden, V] matmul plus a log-softmax over V per position) can be skipped on the
positions nobody reads: ``first_scored_position`` leaves everything before it at 0. Callers pass
``first_masked_position(mask)`` so prompt tokens, whose log-probs the loss masks out, cost only
the decoder forward.

A plain ``nn.Linear`` head runs in ``linear_head.LinearLogprobEntropy``, which keeps only
per-position values for the backward and recomputes each chunk's logits there; other heads
(LoRA-wrapped, hooked) take the per-chunk module path, which keeps each chunk's fp32 logits for
the backward.
:func:`head_logprobs` picks between them; the packed (padding-free) forward in
``alignlib.trainer.packing`` runs the same head on exactly the scored positions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from alignlib.trainer.linear_head import LinearLogprobEntropy


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
    targets: Tensor | None = None,
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
        targets: [B, T] the token each position t is scored against, when it is not the
            input token x_t (a process reward model learns its label token at a step's tag,
            while the input keeps the text); None: ``input_ids``.
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
    goals = input_ids if targets is None else targets
    hidden, goals = hidden[:, skipped - 1 : -1], goals[:, skipped:]
    dtype = torch.promote_types(hidden.dtype, torch.float32)  # that of the chunks' outputs
    pad = hidden.new_zeros(input_ids.shape[0], skipped, dtype=dtype)
    if hidden.shape[1] == 0:
        logps = ents = pad[:, :0]
    else:
        head = model.get_output_embeddings()
        logps, ents = head_logprobs(hidden, head, goals, chunk_size, with_entropy, temperature)
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
