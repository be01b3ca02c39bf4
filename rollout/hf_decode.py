"""The decode loop of `HFEngine`: continues a prefilled KV cache one token per step and drops
every row that finished (EOS or a stop string) from the batch, cache included, so that a row
costs nothing after its end, and the loop ends when the last row does.

`model.generate` instead keeps finished rows in the batch, feeding them padding until the
longest row ends: with completion lengths spread between 10 and 32 tokens, a third or more of
its decode compute goes to rows that are already done.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.generation.stopping_criteria import StopStringCriteria

from alignlib.rollout.hf_sampler import TokenSampler


def decode(
    model: torch.nn.Module,
    cache: Any,
    cache_key: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sampler: TokenSampler,
    max_new_tokens: int,
    eos_token_ids: list[int],
    stop: StopStringCriteria | None,
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate up to `max_new_tokens` tokens for every row.

    Args:
        cache: The rows' KV cache holding every prompt column but the last (a `DynamicCache`
            whose layers `batch_select_indices` can compact), extended in place.
        input_ids, attention_mask: [R, W] left-padded prompts.
        stop: Stop-string criterion over whole sequences, or None.

    Returns:
        tokens [R, T] (`pad_token_id` after a row's last token) and their log-probabilities
        [R, T] (0 after a row's last token), where T is the number of steps the longest row took.
    """
    rows, width = input_ids.shape
    device = input_ids.device
    sequences, mask, logprobs = _buffers(input_ids, attention_mask, max_new_tokens, pad_token_id)
    eos = torch.tensor(eos_token_ids, device=device)
    alive = torch.arange(rows, device=device)  # original index of each row still in the batch
    position = attention_mask.sum(-1, keepdim=True) - 1  # [A, 1] of the token fed next
    fed = input_ids[:, -1:]  # the last prompt token, not in the cache yet
    steps = 0
    for step in range(max_new_tokens):
        end = width + step  # sequence columns [0, end) are in the cache after this forward
        logits, cache = _forward(model, cache, cache_key, fed, mask[alive, :end], position)
        tokens, chosen = _choose(sampler, logits, sequences[alive, :end], alive, rows)
        sequences[alive, end] = tokens
        logprobs[alive, step] = chosen.double()
        mask[alive, end] = 1
        steps = step + 1
        done = _finished(tokens, eos, stop, sequences, alive, end + 1)
        if done.all():
            break
        if done.any():
            keep = (~done).nonzero()[:, 0]
            cache.batch_select_indices(keep)
            alive, tokens, position = alive[keep], tokens[keep], position[keep]
        fed, position = tokens[:, None], position + 1
    return sequences[:, width : width + steps], logprobs[:, :steps]


def _forward(
    model: torch.nn.Module,
    cache: Any,
    cache_key: str,
    fed: torch.Tensor,
    attention_mask: torch.Tensor,
    position: torch.Tensor,
) -> tuple[torch.Tensor, Any]:
    """[A, V] next-token logits of the alive rows after feeding ``fed`` [A, 1] at ``position``
    [A, 1], and the cache extended by it."""
    out = model(
        input_ids=fed,
        attention_mask=attention_mask,
        position_ids=position,
        use_cache=True,
        **{cache_key: cache},
    )
    return out.logits[:, -1], out[cache_key]


def _choose(
    sampler: TokenSampler,
    logits: torch.Tensor,
    sequences: torch.Tensor,
    alive: torch.Tensor,
    rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The alive rows' next tokens [A] and their log-probabilities [A], from ``logits`` [A, V]
    after ``sequences`` [A, end]."""
    # Drawn for every row, alive or not, so each row's stream is independent of the others.
    uniforms = sampler.uniforms(rows, sequences.device)
    return sampler.choose(sequences, logits, None if uniforms is None else uniforms[alive])


def _finished(
    tokens: torch.Tensor,
    eos: torch.Tensor,
    stop: StopStringCriteria | None,
    sequences: torch.Tensor,
    alive: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """[A] bool: the alive rows whose newest token (``tokens`` [A], the last of their
    ``sequences[:, :width]``) is an end of sequence or completes a stop string."""
    done = torch.isin(tokens, eos)
    if stop is not None:  # reads the whole sequences, so only when there are stop strings
        done |= stop(sequences[alive, :width], None)
    return done


def _buffers(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[R, W + N] sequences (prompts, then padding) and attention mask (prompts', then 0), and
    [R, N] float64 log-probs (0): what the decode loop fills in, N = ``max_new_tokens``."""
    rows, width = input_ids.shape
    sequences = input_ids.new_full((rows, width + max_new_tokens), pad_token_id)
    sequences[:, :width] = input_ids
    mask = torch.cat([attention_mask, attention_mask.new_zeros(rows, max_new_tokens)], dim=1)
    logprobs = torch.zeros(rows, max_new_tokens, dtype=torch.float64, device=input_ids.device)
    return sequences, mask, logprobs
