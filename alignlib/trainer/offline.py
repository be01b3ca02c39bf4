"""Offline training pieces: the tokenized data set with a resumable sampler, cached reference
log-probs, and one optimizer step with exact gradient accumulation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from alignlib.config.schema import DataConfig
from alignlib.data import Example, collate, encode_example, infer_format, load_rows
from alignlib.data.collate import Collated
from alignlib.data.formats import check_rows
from alignlib.device import HOST
from alignlib.estimator import Batch, UnifiedEstimator
from alignlib.trainer.step import Context, HostRows, LogprobKernel

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


def host_rows(col: Collated) -> HostRows:
    return HostRows(col.input_ids, col.attention_mask, col.completion_mask)


@torch.no_grad()
def cache_logprobs(
    kernel: LogprobKernel,
    examples: list[Example],
    pad_id: int,
    batch_size: int,
    context: Context | None = None,
) -> LogprobCache:
    """Per-token log-probs of every sequence under a frozen model, computed once, kept on the
    host (a data set's worth of them need not occupy the device)."""
    cache: LogprobCache = {}
    for group in _chunks(examples, batch_size):
        col = collate(group, pad_id)
        # Only read under a completion mask later; rows are right-padded, so a sequence's
        # completion sits at the same columns here as in any later collate.
        logprobs, _ = kernel.all_rows(host_rows(col), col.input_ids.shape[0], context=context)
        logprobs = logprobs.to(HOST)
        row = 0
        for example in group:
            for j, seq in enumerate(example.sequences):
                cache[(example.index, j)] = logprobs[row, : len(seq)].float()
                row += 1
    return cache


def cached_tensor(cache: LogprobCache, examples: list[Example], width: int) -> Tensor:
    """[R, width] host tensor of cached log-probs laid out like ``collate(examples)``."""
    rows = [cache[(ex.index, j)] for ex in examples for j in range(len(ex.sequences))]
    out = torch.zeros(len(rows), width, device=HOST)
    for r, values in enumerate(rows):
        out[r, : values.numel()] = values
    return out


@dataclass
class StepInputs:
    kernel: LogprobKernel
    estimator: UnifiedEstimator
    pad_id: int
    micro_batch_size: int
    ref_cache: LogprobCache | None = None
    prev_cache: LogprobCache | None = None
    live_reference: Context | None = None
    """Context that turns the policy into the reference (adapter off), for on-the-fly refs."""


def accumulate_gradients(inputs: StepInputs, examples: list[Example]) -> dict[str, float]:
    """Forward/backward every micro-batch of one optimizer mini-batch; returns its metrics.

    The estimator prepares the whole mini-batch first (on the device, moved there once), so the
    accumulated gradient equals the single-pass gradient exactly whatever the micro-batch size.
    """
    col = collate(examples, inputs.pad_id)
    rows, width = col.input_ids.shape
    needs = inputs.estimator.requirements()
    kernel = inputs.kernel
    full = Batch(
        logprobs=torch.zeros(rows, width, device=HOST),
        mask=col.completion_mask,
        ref_logprobs=_reference(inputs.ref_cache, examples, width, needs, "ref_logprobs"),
        prev_logprobs=_reference(inputs.prev_cache, examples, width, needs, "prev_logprobs"),
        entropy=torch.zeros(rows, width, device=HOST) if "entropy" in needs else None,
        roles=col.roles,
        pair_ids=col.pair_ids,
        trace=col.trace,
    )
    prepared = inputs.estimator.prepare(full.to(kernel.device))
    totals: dict[str, float] = {k: float(v) for k, v in prepared.prepared_metrics.items()}
    host = host_rows(col)
    for group in _chunks(list(range(len(examples))), inputs.micro_batch_size):
        row_idx = torch.isin(col.example_of_row, torch.tensor(group, device=HOST))
        row_idx = row_idx.nonzero().flatten()
        out = kernel(host, row_idx, with_entropy="entropy" in needs)
        micro = prepared.select(row_idx.to(kernel.device)).narrow(out.width)
        micro = micro.replace(logprobs=out.logprobs)
        if out.entropy is not None:
            micro = micro.replace(entropy=out.entropy)
        if inputs.live_reference is not None and "ref_logprobs" in needs:
            ref = kernel(host, row_idx, grad=False, context=inputs.live_reference)
            micro = micro.replace(ref_logprobs=ref.logprobs)
        result = inputs.estimator(micro)
        result.loss.backward()
        for key, value in result.metrics.items():
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
        return torch.zeros(sum(len(e.sequences) for e in examples), width, device=HOST)
    return cached_tensor(cache, examples, width)
