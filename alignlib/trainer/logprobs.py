"""Per-token log-probs and entropy of a causal LM, chunked so no full fp32 [T, V] tensor exists.

Position t of the output scores token t+1 of the input (the usual shift); the returned tensors
are right-aligned with ``input_ids[:, 1:]`` and padded with zeros at position 0 so that they
have the same [B, T] shape as the inputs and the completion mask.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _chunk_logprobs(
    hidden: Tensor, head: nn.Module, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    logits = head(hidden).float() / temperature  # [B, c, V] only for this chunk
    logsumexp = torch.logsumexp(logits, dim=-1)
    chosen = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    probs = torch.softmax(logits, dim=-1)
    entropy = logsumexp - (probs * logits).sum(-1)
    return chosen - logsumexp, entropy


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    chunk_size: int = 256,
    with_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor | None]:
    """(log π(x_t | x_<t), entropy) for every position t ≥ 1, shape [B, T] (column 0 is 0).

    The LM head runs on ``chunk_size`` positions at a time, so peak memory holds one
    [B, chunk, V] block of logits instead of [B, T, V].
    """
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    hidden = base(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    head = model.get_output_embeddings()
    hidden, targets = hidden[:, :-1], input_ids[:, 1:]
    logps, entropies = [], []
    for start in range(0, hidden.shape[1], chunk_size):
        stop = start + chunk_size
        lp, ent = _chunk_logprobs(hidden[:, start:stop], head, targets[:, start:stop], temperature)
        logps.append(lp)
        entropies.append(ent if with_entropy else ent.detach())
    pad = hidden.new_zeros(input_ids.shape[0], 1, dtype=torch.float32)
    logprobs = torch.cat([pad, *logps], dim=1)
    entropy = torch.cat([pad, *entropies], dim=1) if with_entropy else None
    return logprobs, entropy
