"""Padding-free (packed) micro-batches and micro-batches by token budget.

Packing: a micro-batch's rows, padding dropped, are concatenated into one [1, N] sequence
(N = Σ real lengths) whose position ids restart at 0 on each row. With FlashAttention the
decoder runs once on it through the varlen kernel (given the cumulative row lengths); on a CPU
each row runs through the decoder on its own; otherwise (SDPA / eager / flex on a GPU, or an
FSDP2-sharded model) once, with the block-diagonal causal mask transformers builds from the
position ids when no attention mask is given (``masking_utils.find_packed_sequence_indices``).
Each way, a token sees exactly the tokens it sees in its padded row, at the same positions:
the log-probs are the padded path's. Only the scored tokens then go through the LM head.

The cost of a forward: padded, r rows cost r × (the longest row) tokens of decoder work;
packed, Σ lengths. Attention: Σ L² per row (varlen, rows) or N² (one masked [N, N] matrix,
which on a CPU measured slower than padding: hence the ``rows`` mode there).

Token budget: :class:`MicroBatching` splits a mini-batch into micro-batches of at most
``max_tokens`` tokens each (counted as the kernel will run them: Σ lengths when packed,
rows × longest row when padded), greedily and in order, keeping units (a DPO pair's rows) in
one micro-batch. It only moves rows between passes: the estimator's normalizers are computed
over the whole mini-batch before it is split, so the accumulated gradient is the same.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from alignlib.device import HOST
from alignlib.trainer.logprobs import head_logprobs

MASK_ATTENTION = ("sdpa", "eager", "flex_attention")
"""Attention implementations whose mask ``create_causal_mask`` builds from packed position
ids (block-diagonal)."""


@dataclass(frozen=True)
class PackedRows:
    """One micro-batch as a single padding-free sequence, on the host."""

    input_ids: Tensor
    """[1, N] the real tokens of every row, row after row."""
    position_ids: Tensor
    """[1, N] each token's position within its own row (0 at the row's first real token)."""
    scored: Tensor
    """[S] flat index (into N) of each computed output position: the scored tokens that are
    not a row's first (nothing precedes it); all such tokens when none is scored, so that a
    loss still has a graph to call backward on (as ``first_masked_position`` gives 0)."""
    rows: Tensor
    """[S] the micro-batch row of each computed position."""
    columns: Tensor
    """[S] its column in the padded [r, width] layout."""
    cu_seq_lens: Tensor
    """[r + 1] int32 cumulative row lengths (FlashAttention's varlen boundaries)."""
    max_length: int
    """The longest row: the padded layout's width."""
    targets: Tensor | None = None
    """[1, N] the token each position is scored against, packed as ``input_ids``; None: the
    input tokens."""

    @property
    def num_rows(self) -> int:
        return self.cu_seq_lens.numel() - 1


def pack(
    input_ids: Tensor,
    attention: Tensor,
    scored: Tensor,
    first_scored: bool = False,
    targets: Tensor | None = None,
) -> PackedRows:
    """Pack the [r, W] padded rows of one micro-batch (right- or left-padded: each row's real
    tokens must be contiguous, as a collator writes them); ``scored`` marks the output
    positions that will be read. ``first_scored``: a row's first token may be read too (a
    sequence scorer reads each row's last token, the first of a one-token row)."""
    real = attention.ne(0)
    lengths = real.sum(-1)
    position = real.cumsum(-1) - 1
    first = real.int().argmax(-1)
    last = real.shape[1] - 1 - real.flip(-1).int().argmax(-1)
    if bool((lengths.gt(0) & (last - first + 1).ne(lengths)).any()):
        raise ValueError("pack: a row's real tokens are not contiguous (padding inside a row)")
    flat_positions = position[real]
    rows, columns = real.nonzero(as_tuple=True)
    after_first = flat_positions.ge(0) if first_scored else flat_positions.gt(0)
    wanted = scored.ne(0)[real] & after_first
    if not bool(wanted.any()):
        wanted = after_first
    picked = wanted.nonzero().flatten()
    cu_seq_lens = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=HOST)
    cu_seq_lens[1:] = lengths.cumsum(0)
    return PackedRows(
        input_ids=input_ids[real].unsqueeze(0),
        position_ids=flat_positions.unsqueeze(0),
        scored=picked,
        rows=rows[picked],
        columns=columns[picked],
        cu_seq_lens=cu_seq_lens,
        max_length=int(lengths.max()) if lengths.numel() else 0,
        targets=None if targets is None else targets[real].unsqueeze(0),
    )


def unpack(values: Tensor, packed: PackedRows, width: int) -> Tensor:
    """[S] values of the computed positions → [r, width] in the padded layout, 0 elsewhere
    (differentiable; on ``values``' device)."""
    out = values.new_zeros(packed.num_rows, width)
    where = (packed.rows.to(values.device), packed.columns.to(values.device))
    return out.index_put(where, values)


def decoder_of(model: nn.Module) -> nn.Module:
    """The model's decoder stack (no LM head), as ``token_logprobs`` calls it."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


PackingMode = Literal["rows", "mask", "varlen"]


def packing_mode(
    model: nn.Module, device: torch.device, sharded: bool
) -> tuple[PackingMode | None, str]:
    """How ``model`` runs a packed micro-batch's decoder, or (None, why it cannot).

    - ``varlen``: one call, FlashAttention's varlen kernel (``flash_attention_*``).
    - ``rows``: on a CPU, each row through the decoder on its own (plain causal, no mask):
      attention costs Σ L² where one block-diagonal [N, N] mask costs N² (measured: the mask
      is slower than padding on a CPU, rows are faster). Any causal LM can do this.
    - ``mask``: one call with the block-diagonal causal mask transformers builds from the
      position ids (a GPU without FlashAttention, or an FSDP2-sharded model, whose units must
      run once per pass): needs a decoder that builds its mask with ``create_causal_mask``.
    """
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if str(attention).startswith("flash_attention"):
        return "varlen", ""
    if device.type == "cpu" and not sharded:
        return "rows", ""
    from transformers import masking_utils

    if not hasattr(masking_utils, "find_packed_sequence_indices"):
        return None, "this transformers version does not read packed position ids (< 4.54)"
    if attention not in MASK_ATTENTION:
        return None, f"its attention {attention!r} is none of {MASK_ATTENTION}"
    decoder = decoder_of(model)
    builder = masking_utils.create_causal_mask
    modules = (sys.modules.get(cls.__module__) for cls in type(decoder).__mro__)
    if not any(getattr(module, "create_causal_mask", None) is builder for module in modules):
        return None, f"{type(decoder).__name__} does not build its mask with create_causal_mask"
    return "mask", ""


def head_is_hooked(model: nn.Module) -> bool:
    """A hook on the LM head (``head_hooks``: the kept mass, WPO's log Σπ²) reads the padded
    [r, positions] layout of the logits it sees, so such a pass runs padded."""
    head = model.get_output_embeddings()
    return bool(head is None or head._forward_hooks or head._forward_pre_hooks)


def decode_packed(
    model: nn.Module,
    input_ids: Tensor,
    position_ids: Tensor,
    row_lengths: list[int] | None,
    attention: dict[str, Any],
) -> Tensor:
    """[1, N, hidden] last hidden states of the packed rows: one call, or one per row."""
    decoder = decoder_of(model)
    if row_lengths is None:
        return decoder(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=None,
            use_cache=False,
            **attention,
        ).last_hidden_state
    rows = zip(input_ids.split(row_lengths, 1), position_ids.split(row_lengths, 1), strict=True)
    states = [
        decoder(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
        for ids, pos in rows
    ]
    return torch.cat(states, dim=1)


def packed_token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    position_ids: Tensor,
    scored: Tensor,
    *,
    chunk_size: int = 256,
    with_entropy: bool = False,
    temperature: float = 1.0,
    row_lengths: list[int] | None = None,
    targets: Tensor | None = None,
    **attention: Any,
) -> tuple[Tensor, Tensor | None]:
    """(log π, entropy) of the ``scored`` tokens of a packed sequence, shape [S] each.

    Args:
        input_ids: [1, N] the rows' real tokens, row after row (:func:`pack`).
        position_ids: [1, N] positions restarting at 0 on each row: with no attention mask,
            transformers makes each row attend only to itself (a block-diagonal causal mask,
            or FlashAttention's varlen kernel given ``attention``'s ``cu_seq_lens_*``).
        scored: [S] flat indices of the tokens to score, none a row's first (token k is scored
            from hidden state k - 1, which is then in the same row).
        chunk_size: Positions per LM-head chunk (the packed row is one long [1, S] row).
        row_lengths: Run the decoder on each row of these lengths on its own (``rows`` mode).
        targets: [1, N] the token each position is scored against, packed as ``input_ids``;
            None: ``input_ids`` (see :func:`~alignlib.trainer.logprobs.token_logprobs`).
    """
    hidden = decode_packed(model, input_ids, position_ids, row_lengths, attention)
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    if scored.numel() == 0:
        empty = hidden.new_zeros(0, dtype=dtype)
        return empty, empty if with_entropy else None
    # Only the scored positions reach the head: no prompt or padding column is computed.
    goals = (input_ids if targets is None else targets)[:, scored]
    states = hidden[:, scored - 1]
    head = model.get_output_embeddings()
    logps, ents = head_logprobs(states, head, goals, chunk_size, with_entropy, temperature)
    return logps[0].to(dtype), ents[0].to(dtype) if with_entropy else None


def decoder_kwargs(mode: PackingMode, packed: PackedRows, device: torch.device) -> dict[str, Any]:
    """What the decoder call needs beyond the ids and positions: the row lengths (``rows``),
    the varlen boundaries (``varlen``: FlashAttention need not infer them in every layer)."""
    if mode == "rows":
        return {"row_lengths": packed.cu_seq_lens.diff().tolist()}
    if mode == "varlen":
        cu = packed.cu_seq_lens.to(device, non_blocking=True)
        length = packed.max_length
        return {
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": length,
            "max_length_k": length,
        }
    return {}


@dataclass(frozen=True)
class MicroBatching:
    """How a mini-batch's rows are split into forward/backward passes."""

    size: int
    """Units (examples, or rows online) per pass when there is no token budget."""
    max_tokens: int | None = None
    """Token budget per pass (``train.max_tokens_per_micro_batch``); replaces ``size``."""
    packed: bool = False
    """How a pass's tokens count: Σ real lengths when packed, rows × longest row when padded."""

    @staticmethod
    def of(spec: int | MicroBatching) -> MicroBatching:
        """A plain number is ``size`` units per pass."""
        return spec if isinstance(spec, MicroBatching) else MicroBatching(spec)

    def cost(self, lengths: list[int]) -> int:
        """Tokens a pass over rows of these real lengths runs through the decoder."""
        return sum(lengths) if self.packed else len(lengths) * max(lengths, default=0)

    def split(self, units: list[Tensor], lengths: Tensor) -> list[Tensor]:
        """Row indices of each pass. ``units``: [k] host index tensors of rows that share a
        pass, in order; ``lengths``: [R] real length of every row. With a budget, units join
        the current pass while its cost stays ≤ ``max_tokens`` (a unit over it alone gets a
        pass of its own)."""
        if self.max_tokens is None:
            groups = [units[i : i + self.size] for i in range(0, len(units), self.size)]
            return [torch.cat(group) for group in groups]
        every = lengths.tolist()
        passes: list[list[Tensor]] = []
        current: list[int] = []
        for unit in units:
            mine = [every[i] for i in unit.tolist()]
            if current and self.cost(current + mine) > self.max_tokens:
                current = []
            if not current:
                passes.append([])
            passes[-1].append(unit)
            current += mine
        return [torch.cat(group) for group in passes]
