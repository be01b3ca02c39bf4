"""A one-output sequence scorer (a Bradley-Terry reward model) in the kernel's layout: each
row's score r(x, y) sits where its last token's log-prob would, 0 on every other column, so the
estimator's ``score`` likelihood (a sequence sum) reads r and its gradient is ∇r. Padded rows
and packed ones (``train.packing``) give the same layout."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from alignlib.trainer.packing import decode_packed


def scalar_head(model: nn.Module) -> nn.Module | None:
    """The score head of a transformers ``*ForSequenceClassification`` model (also inside a
    peft wrapper, which swaps the head for its trainable copy in place); None for a language
    model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not type(base).__name__.endswith("ForSequenceClassification"):
        return None
    return base.score


def _decoded(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor
) -> tuple[Tensor, nn.Module]:
    """([B, T, hidden] the decoder's last states, the one-output head) of padded rows."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = scalar_head(model)
    assert head is not None, "a one-output head (a reward model, a critic) is needed here"
    decoder = getattr(base, base.base_model_prefix)
    hidden = decoder(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    return hidden, head


def _decoded_packed(
    model: nn.Module,
    input_ids: Tensor,
    position_ids: Tensor,
    row_lengths: list[int] | None,
    attention: dict[str, Any],
) -> tuple[Tensor, nn.Module]:
    """([1, N, hidden] the decoder's last states, the one-output head) of a packed sequence."""
    head = scalar_head(model)
    assert head is not None, "a one-output head (a reward model, a critic) is needed here"
    return decode_packed(model, input_ids, position_ids, row_lengths, attention), head


def sequence_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """[B, T] r(x, y) of each row at its last attended token, 0 elsewhere: the head reads the
    decoder's state there, as transformers' own classifier does."""
    hidden, head = _decoded(model, input_ids, attention_mask)
    rows = torch.arange(input_ids.shape[0], device=hidden.device)
    columns = torch.arange(input_ids.shape[1], device=hidden.device)
    last = (attention_mask.long() * columns).argmax(-1)  # the last attended column
    scores = head(hidden[rows, last]).squeeze(-1)
    dtype = torch.promote_types(scores.dtype, torch.float32)  # as the log-prob path's output
    out = torch.zeros(input_ids.shape, dtype=dtype, device=hidden.device)
    return out.index_put((rows, last), scores.to(dtype))


def packed_sequence_scores(
    model: nn.Module,
    input_ids: Tensor,
    position_ids: Tensor,
    scored: Tensor,
    *,
    row_lengths: list[int] | None = None,
    **attention: Any,
) -> Tensor:
    """[S] values at the ``scored`` positions of a packed sequence (``packing.pack``): r(x, y) at
    each row's last token, 0 at the others, so that ``unpack`` gives :func:`sequence_scores`'s
    padded layout. A row ends where the next position restarts at 0 (or the sequence ends);
    ``row_lengths`` / ``attention`` choose the decoder route as for packed log-probs."""
    hidden, head = _decoded_packed(model, input_ids, position_ids, row_lengths, attention)
    positions = position_ids[0]
    row_end = torch.ones_like(positions, dtype=torch.bool)
    row_end[:-1] = positions[1:].eq(0)
    at_end = row_end[scored]
    scores = head(hidden[0, scored[at_end]]).squeeze(-1)
    dtype = torch.promote_types(scores.dtype, torch.float32)
    out = torch.zeros(scored.shape, dtype=dtype, device=hidden.device)
    return out.masked_scatter(at_end, scores.to(dtype))


def token_values(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, first_scored_position: int = 1
) -> Tensor:
    """[B, T] a value model's V(s_t) of each token t, read from the state before it (the
    prompt and the tokens before t, as the LM head reads log π of t there), from column
    ``first_scored_position`` on; 0 on the columns before (no state precedes column 0)."""
    hidden, head = _decoded(model, input_ids, attention_mask)
    first = max(first_scored_position, 1)
    values = head(hidden[:, first - 1 : -1]).squeeze(-1)
    dtype = torch.promote_types(values.dtype, torch.float32)
    before = torch.zeros(input_ids.shape[0], first, dtype=dtype, device=hidden.device)
    return torch.cat([before, values.to(dtype)], dim=1)


def packed_token_values(
    model: nn.Module,
    input_ids: Tensor,
    position_ids: Tensor,
    scored: Tensor,
    *,
    row_lengths: list[int] | None = None,
    **attention: Any,
) -> Tensor:
    """[S] V(s_t) at the ``scored`` positions of a packed sequence (none a row's first), each
    from the state before it, as :func:`token_values` in the padded layout."""
    hidden, head = _decoded_packed(model, input_ids, position_ids, row_lengths, attention)
    values = head(hidden[0, scored - 1]).squeeze(-1)
    return values.to(torch.promote_types(values.dtype, torch.float32))
