"""A one-output sequence scorer (a Bradley-Terry reward model) in the kernel's layout: each
row's score r(x, y) sits where its last token's log-prob would, 0 on every other column, so the
estimator's ``score`` likelihood (a sequence sum) reads r and its gradient is ∇r."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def scalar_head(model: nn.Module) -> nn.Module | None:
    """The score head of a transformers ``*ForSequenceClassification`` model (also inside a
    peft wrapper, which swaps the head for its trainable copy in place); None for a language
    model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not type(base).__name__.endswith("ForSequenceClassification"):
        return None
    return base.score


def sequence_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """[B, T] r(x, y) of each row at its last attended token, 0 elsewhere: the head reads the
    decoder's state there, as transformers' own classifier does."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = scalar_head(model)
    assert head is not None, "sequence_scores needs a sequence classifier"
    decoder = getattr(base, base.base_model_prefix)
    hidden = decoder(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    rows = torch.arange(input_ids.shape[0], device=hidden.device)
    columns = torch.arange(input_ids.shape[1], device=hidden.device)
    last = (attention_mask.long() * columns).argmax(-1)  # the last attended column
    scores = head(hidden[rows, last]).squeeze(-1)
    dtype = torch.promote_types(scores.dtype, torch.float32)  # as the log-prob path's output
    out = torch.zeros(input_ids.shape, dtype=dtype, device=hidden.device)
    return out.index_put((rows, last), scores.to(dtype))
