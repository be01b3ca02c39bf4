"""The offline source: a tokenized data set with a resumable sampler, reference log-probs
cached once, and its mini-batches for the loop (SFT, the DPO family, TPO, BVPO, INPO's pairs)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from alignlib.config.schema import RunConfig
from alignlib.console import warn
from alignlib.data import Example, collate
from alignlib.data.collate import Collated
from alignlib.device import HOST
from alignlib.estimator import Batch, Role
from alignlib.trainer.evaluation import in_loop_eval
from alignlib.trainer.model import adapter_context
from alignlib.trainer.offline_heldout import heldout_due, heldout_metrics
from alignlib.trainer.packing import MicroBatching
from alignlib.trainer.state import TrainState
from alignlib.trainer.step import Context, HostRows, LogprobKernel
from alignlib.trainer.update import LiveReference, MiniBatch, UpdateResult, merge_results

LogprobCache = dict[tuple[int, int], Tensor]
"""(example index, sequence index) → per-position log-probs of that sequence (position 0 is 0,
and so may be prompt positions: only what a completion mask can select is computed)."""


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


def host_rows(col: Collated, with_prompt: bool = False) -> HostRows:
    """The rows to forward; ``with_prompt``: the prompt's tokens are scored too (their
    log-probs computed, not only the completion's)."""
    scored = col.completion_mask + col.prompt_mask if with_prompt else col.completion_mask
    return HostRows(col.input_ids, col.attention_mask, scored, col.targets)


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


def offline_minibatch(
    examples: list[Example],
    pad_id: int,
    needs: dict[str, str],
    micro_batch_size: int | MicroBatching,
    ref_cache: LogprobCache | None = None,
    prev_cache: LogprobCache | None = None,
    live_reference: LiveReference | None = None,
    trained_roles: frozenset[Role] | None = None,
) -> MiniBatch:
    """The rows of ``examples`` (every sequence of each) as one optimizer mini-batch; micro
    batches hold whole examples, so a pair's chosen and rejected rows meet in one forward:
    ``micro_batch_size`` examples each, or as many as a :class:`MicroBatching`'s token budget
    holds. Rows of a role no term trains on (KTO's KL rows; ``trained_roles``) stay in the
    mini-batch's fields but in no micro-batch: no gradient pass runs over them."""
    col = collate(examples, pad_id)
    rows, width = col.input_ids.shape
    fields = Batch(
        logprobs=torch.zeros(rows, width, device=HOST),
        mask=col.completion_mask,
        prompt_mask=col.prompt_mask if "prompt_mask" in needs else None,
        ref_logprobs=_reference(ref_cache, examples, width, needs, "ref_logprobs"),
        prev_logprobs=_reference(prev_cache, examples, width, needs, "prev_logprobs"),
        entropy=torch.zeros(rows, width, device=HOST) if "entropy" in needs else None,
        # WPO's: each micro-batch's forward gives it (update.accumulate); read per call.
        log_sum_sq_probs=torch.zeros(rows, width, device=HOST)
        if "log_sum_sq_probs" in needs
        else None,
        roles=col.roles,
        pair_ids=col.pair_ids,
        trace=col.trace,
        margins=col.margins,
    )
    trained = torch.ones(rows, dtype=torch.bool, device=HOST)
    if trained_roles is not None:
        wanted = torch.tensor([int(r) for r in trained_roles], device=HOST)
        trained = torch.isin(col.roles, wanted)
    # Each example's trained rows, in row order (collate writes them example by example).
    units = [(col.example_of_row.eq(i) & trained).nonzero().flatten() for i in range(len(examples))]
    micro = MicroBatching.of(micro_batch_size).split(units, col.attention_mask.sum(-1))
    return MiniBatch(
        host_rows(col, with_prompt="prompt_mask" in needs),
        fields,
        micro,
        live_reference=live_reference,
        metrics={"tokens": float(col.attention_mask[trained].sum())},
    )


def with_present_logprobs(kernel: LogprobKernel, batch: MiniBatch, rows_per_pass: int) -> MiniBatch:
    """The mini-batch with the present policy's log-probs of every row (a no-grad pass), and
    their entropy where the batch carries one, for an estimator whose ``prepare`` reads them;
    an adapter-off reference is computed for every row here too, since ``prepare`` reads it
    before any micro-batch would fill it."""
    wants_entropy = batch.fields.entropy is not None
    present, entropy = kernel.all_rows(batch.rows, rows_per_pass, with_entropy=wants_entropy)
    fields = batch.fields.replace(logprobs=present, entropy=entropy)
    if batch.live_reference is not None and fields.ref_logprobs is not None:
        live = batch.live_reference
        reference, _ = live.kernel.all_rows(batch.rows, rows_per_pass, context=live.context)
        fields = fields.replace(ref_logprobs=reference)
    return dataclasses.replace(batch, fields=fields, live_reference=None)


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


class OfflineSource:
    """Mini-batches of a fixed, tokenized data set (SFT, the DPO family, TPO, BVPO; INPO's
    pairs of one iteration), with reference / previous-iterate log-probs cached once."""

    def __init__(
        self,
        config: RunConfig,
        examples: list[Example],
        prev_cache: LogprobCache | None = None,
        ref_cache: LogprobCache | None = None,
        heldout: list[Example] | None = None,
    ) -> None:
        self.config, self.examples = config, examples
        self.heldout, self.heldout_cache = heldout or [], None
        train = config.train
        self.position = Sampler(len(examples), train.batch_size, train.seed, config.data.shuffle)
        if len(examples) < train.batch_size:
            warn(
                f"{config.data.path} has {len(examples)} training examples, fewer than "
                f"train.batch_size ({train.batch_size}): every step trains on those "
                f"{len(examples)}"
            )
        self.total_steps = train.max_steps or train.epochs * self.position.steps_per_epoch()
        self.optimizer_steps = self.total_steps
        self.prev_cache, self.ref_cache = prev_cache, ref_cache
        self.live_reference: LiveReference | None = None
        self.extra_metrics: dict[str, float] = {}

    def prepare(self, state: TrainState) -> None:
        """Before a resume loads trained weights: the reference is the initial policy."""
        self.state, self.kernel = state, state.kernel()
        config = self.config
        needs = state.estimator.requirements()
        if "ref_logprobs" in needs and self.ref_cache is None:
            context = adapter_context(state.model) if config.lora.enabled else None
            if config.train.reference == "precompute":
                batch = config.train.micro_batch_size * 2
                kernel = state.kernel()  # the policy before any update (no copy), or:
                if config.model.reference_name_or_path is not None:
                    kernel, context = state.reference_kernel()  # freed once cached
                self.ref_cache = cache_logprobs(kernel, self.examples, state.pad_id, batch, context)
                if self.heldout:
                    pad = state.pad_id
                    self.heldout_cache = cache_logprobs(kernel, self.heldout, pad, batch, context)
            elif config.train.reference == "adapter":
                self.live_reference = LiveReference(self.kernel, context)
            elif config.train.reference == "live":
                self.live_reference = LiveReference(*state.reference_kernel())

    def begin(self, out_dir: Path, start: int) -> dict[str, float]:
        """The held-out metrics of the untrained policy, for comparison."""
        self.out_dir = out_dir
        return self.heldout_metrics() if start == 0 and self.heldout else {}

    def batches(self, step: int) -> Iterator[MiniBatch]:
        examples = [self.examples[i] for i in self.position.next_batch()]
        yield self.minibatch(examples, self.ref_cache)

    def minibatch(self, examples: list[Example], ref_cache: LogprobCache | None) -> MiniBatch:
        """``examples`` as one mini-batch with what the estimator reads (training or held-out)."""
        state, train = self.state, self.config.train
        estimator = state.estimator
        batch = offline_minibatch(
            examples,
            state.pad_id,
            estimator.requirements(),
            self.kernel.batching(train.micro_batch_size),
            ref_cache,
            self.prev_cache,
            self.live_reference,
            estimator.trained_roles(),
        )
        if estimator.reads_present_logprobs():  # KTO's weights: from the policy as it is now
            batch = with_present_logprobs(self.kernel, batch, train.micro_batch_size * 2)
        return batch

    def heldout_metrics(self) -> dict[str, float]:
        size = self.config.train.batch_size
        parts = [self.heldout[i : i + size] for i in range(0, len(self.heldout), size)]
        batches = [self.minibatch(part, self.heldout_cache) for part in parts]
        return heldout_metrics(self.kernel, self.state.estimator, batches)

    def finish_step(
        self, step: int, results: list[UpdateResult], seconds: float
    ) -> dict[str, float]:
        metrics = merge_results(results) | self.extra_metrics
        return metrics | {"epoch": self.position.epoch, "tokens_per_s": metrics["tokens"] / seconds}

    def evaluate(self, step: int) -> dict[str, float]:
        metrics = in_loop_eval(self.state, self.config, self.out_dir, step)
        if self.heldout and heldout_due(self.config, step, self.total_steps):
            metrics |= self.heldout_metrics()
        return metrics

    def checkpoint_due(self, step: int) -> bool:
        every = self.config.checkpoint.every
        return bool(every) and step % every == 0

    def close(self) -> None:
        """Nothing to release."""
