"""Offline training pieces: the tokenized data set with a resumable sampler, cached reference
log-probs, and one optimizer step with exact gradient accumulation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from alignlib.config.schema import DataConfig
from alignlib.data import Example, collate, encode_example, infer_format, load_rows
from alignlib.data.formats import check_rows
from alignlib.estimator import Batch, UnifiedEstimator
from alignlib.trainer.logprobs import first_masked_position, token_logprobs

LogprobCache = dict[tuple[int, int], Tensor]
"""(example index, sequence index) → per-position log-probs of that sequence (position 0 is 0,
and so may be prompt positions: only what a completion mask can select is computed)."""


def load_examples(
    config: DataConfig, tokenizer: PreTrainedTokenizerBase, chat: bool
) -> tuple[list[Example], str]:
    """Read, validate and tokenize the training rows; returns the examples and the format."""
    rows = load_rows(config.path, config.split, config.limit)
    if not rows:
        raise ValueError(f"data.path {config.path} has no rows")
    fmt = infer_format(rows[0]) if config.format == "auto" else config.format
    check_rows(rows, fmt, config.path)
    examples = [
        encode_example(
            tokenizer,
            row,
            fmt,
            index=i,
            chat=chat,
            max_prompt_length=config.max_prompt_length,
            max_completion_length=config.max_completion_length,
        )
        for i, row in enumerate(rows)
    ]
    return examples, fmt


@dataclass
class Sampler:
    """Seeded epoch permutations; its state (epoch, cursor) makes resuming exact."""

    size: int
    batch_size: int
    seed: int
    shuffle: bool = True
    epoch: int = 0
    cursor: int = 0
    _order: list[int] = field(default_factory=list, repr=False)

    def _permutation(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.size, generator=gen).tolist()

    def next_batch(self) -> list[int]:
        if not self._order:
            self._order = self._permutation()
        if self.cursor >= self.size:
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation()
        batch = self._order[self.cursor : self.cursor + self.batch_size]
        self.cursor += len(batch)
        return batch

    def steps_per_epoch(self) -> int:
        return -(-self.size // self.batch_size)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = self._permutation()


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def cache_logprobs(
    model: nn.Module,
    examples: list[Example],
    pad_id: int,
    batch_size: int,
    chunk_size: int,
    context: Callable[[], AbstractContextManager] | None = None,
) -> LogprobCache:
    """Per-token log-probs of every sequence under a frozen model, computed once."""
    cache: LogprobCache = {}
    was_training = model.training
    model.eval()
    for group in _chunks(examples, batch_size):
        col = collate(group, pad_id)
        with context() if context is not None else torch.no_grad():
            logprobs, _ = token_logprobs(
                model,
                col.input_ids,
                col.attention_mask,
                chunk_size=chunk_size,
                # Only read under a completion mask later; rows are right-padded, so a sequence's
                # completion sits at the same columns here as in any later collate.
                first_scored_position=first_masked_position(col.completion_mask),
            )
        row = 0
        for example in group:
            for j, seq in enumerate(example.sequences):
                cache[(example.index, j)] = logprobs[row, : len(seq)].float().cpu()
                row += 1
    model.train(was_training)
    return cache


def cached_tensor(cache: LogprobCache, examples: list[Example], width: int) -> Tensor:
    """[R, width] tensor of cached log-probs laid out like ``collate(examples)``."""
    rows = [cache[(ex.index, j)] for ex in examples for j in range(len(ex.sequences))]
    out = torch.zeros(len(rows), width)
    for r, values in enumerate(rows):
        out[r, : values.numel()] = values
    return out


@dataclass
class StepInputs:
    model: nn.Module
    estimator: UnifiedEstimator
    pad_id: int
    micro_batch_size: int
    chunk_size: int
    ref_cache: LogprobCache | None = None
    prev_cache: LogprobCache | None = None
    live_reference: Callable[[], AbstractContextManager] | None = None
    """Context that turns the policy into the reference (adapter off), for on-the-fly refs."""


def accumulate_gradients(inputs: StepInputs, examples: list[Example]) -> dict[str, float]:
    """Forward/backward every micro-batch of one optimizer mini-batch; returns its metrics.

    The estimator prepares the whole mini-batch first, so the accumulated gradient equals the
    single-pass gradient exactly whatever the micro-batch size.
    """
    col = collate(examples, inputs.pad_id)
    rows, width = col.input_ids.shape
    dtype = torch.float32
    model = inputs.model
    device = next(model.parameters()).device
    needs = inputs.estimator.requirements()
    full = Batch(
        logprobs=torch.zeros(rows, width, dtype=dtype),
        mask=col.completion_mask,
        ref_logprobs=_reference(inputs.ref_cache, examples, width, needs, "ref_logprobs"),
        prev_logprobs=_reference(inputs.prev_cache, examples, width, needs, "prev_logprobs"),
        entropy=torch.zeros(rows, width) if "entropy" in needs else None,
        roles=col.roles,
        pair_ids=col.pair_ids,
        trace=col.trace,
    )
    prepared = inputs.estimator.prepare(full)
    totals: dict[str, float] = {k: float(v) for k, v in prepared.prepared_metrics.items()}
    for group in _chunks(list(range(len(examples))), inputs.micro_batch_size):
        row_idx = torch.isin(col.example_of_row, torch.tensor(group)).nonzero().flatten()
        micro_width = int(col.attention_mask[row_idx].sum(-1).max())
        ids = col.input_ids[row_idx, :micro_width].to(device)
        attention = col.attention_mask[row_idx, :micro_width].to(device)
        # The estimator masks every token field with the completion mask, so the LM head can
        # skip the prompt columns before the micro-batch's earliest completion token.
        first = first_masked_position(col.completion_mask[row_idx, :micro_width])
        logprobs, entropy = token_logprobs(
            model,
            ids,
            attention,
            chunk_size=inputs.chunk_size,
            with_entropy="entropy" in needs,
            first_scored_position=first,
        )
        micro = prepared.select(row_idx).narrow(micro_width)
        micro = micro.replace(logprobs=logprobs.cpu() if device.type == "cpu" else logprobs)
        if entropy is not None:
            micro = micro.replace(entropy=entropy)
        if inputs.live_reference is not None and "ref_logprobs" in needs:
            with torch.no_grad(), inputs.live_reference():
                ref, _ = token_logprobs(
                    model,
                    ids,
                    attention,
                    chunk_size=inputs.chunk_size,
                    first_scored_position=first,
                )
            micro = micro.replace(ref_logprobs=ref.detach())
        out = inputs.estimator(micro)
        out.loss.backward()
        for key, value in out.metrics.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    totals["tokens"] = float(col.num_tokens)
    return totals


def _reference(
    cache: LogprobCache | None,
    examples: list[Example],
    width: int,
    needs: dict[str, str],
    name: str,
) -> Tensor | None:
    if name not in needs:
        return None
    if cache is None:  # filled per micro-batch (adapter-off reference)
        return torch.zeros(sum(len(e.sequences) for e in examples), width)
    return cached_tensor(cache, examples, width)
