"""The INPO source (Zhang et al., ICLR 2025): iterations t = 1..T as one run. At the first step
of iteration t it samples K responses per prompt from π_t, ranks them with the oracle, and
caches log π_ref (the initial policy) and log π_t for each (best, worst) pair; the iteration's
steps then train π_{t+1} from π_t on those pairs with the `inpo` estimator and a fresh
optimizer and schedule, as each iteration of the paper is its own training run."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignlib.config.schema import RunConfig
from alignlib.data import load_rows
from alignlib.rollout.base import SamplingParams
from alignlib.rollout.hf_engine import HFEngine
from alignlib.trainer.evaluation import in_loop_eval
from alignlib.trainer.offline import Sampler, cache_logprobs, offline_minibatch
from alignlib.trainer.sample_rank import pairs_to_examples, resolve_oracle, sample_and_rank
from alignlib.trainer.state import TrainState
from alignlib.trainer.update import MiniBatch, UpdateResult, merge_results


class IterationPosition:
    """The completed iterations (checkpoints are taken at iteration boundaries only: the
    pairs of an iteration come from π_t, which a later checkpoint no longer holds)."""

    def __init__(self) -> None:
        self.iteration = 0

    def state_dict(self) -> dict[str, int]:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.iteration = int(state["iteration"])


class InpoSource:
    """``inpo.iterations`` × ``steps_per_iteration`` steps (train.max_steps per iteration, or
    train.epochs over the iteration's at most prompts_per_iteration pairs)."""

    def __init__(self, config: RunConfig) -> None:
        assert config.inpo is not None
        self.config, self.inpo = config, config.inpo
        self.rows = load_rows(config.data.path, config.data.split, config.data.limit)
        if not self.rows or "prompt" not in self.rows[0]:
            raise ValueError(
                f"inpo: data.path {config.data.path} must hold rows with a 'prompt' field"
            )
        self.per_iteration = self.inpo.prompts_per_iteration or len(self.rows)
        train = config.train
        self.steps_per_iteration = train.max_steps or train.epochs * math.ceil(
            self.per_iteration / train.batch_size
        )
        self.total_steps = self.inpo.iterations * self.steps_per_iteration
        self.optimizer_steps = self.steps_per_iteration  # each iteration restarts its schedule
        self.position = IterationPosition()
        self.sampler: Sampler | None = None

    def prepare(self, state: TrainState) -> None:
        """Before a resume loads trained weights: π_ref is the initial policy."""
        self.state, self.kernel = state, state.kernel()
        self.reference = state.reference_kernel()
        if not state.world.is_main:  # rank 0 samples and ranks; the others get its pairs
            return
        self.oracle = resolve_oracle(self.inpo.oracle, state.placement.device)
        placement = state.placement
        autocast = placement.compute_dtype if placement.precision == "bf16-mixed" else None
        self.engine = HFEngine(
            state.model,
            state.tokenizer,
            apply_chat_template=self.config.model.chat_template,
            autocast_dtype=autocast,
        )

    def begin(self, out_dir: Path, start: int) -> dict[str, float]:
        self.out_dir = out_dir
        return {}

    def batches(self, step: int) -> Iterator[MiniBatch]:
        if (step - 1) % self.steps_per_iteration == 0:
            self.start_iteration(self.position.iteration + 1)
        assert self.sampler is not None
        examples = [self.examples[i] for i in self.sampler.next_batch()]
        needs = self.state.estimator.requirements()
        size = self.config.train.micro_batch_size
        pad = self.state.pad_id
        split = self.kernel.batching(size)  # examples, or the token budget
        yield offline_minibatch(examples, pad, needs, split, self.ref_cache, self.prev_cache)

    def start_iteration(self, t: int) -> None:
        """Sample from π_t, rank, cache log π_ref and log π_t; fresh optimizer and schedule."""
        inpo, train = self.inpo, self.config.train
        first = ((t - 1) * self.per_iteration) % len(self.rows)
        prompts = (self.rows + self.rows)[first : first + self.per_iteration]
        sampling = SamplingParams(
            n=inpo.samples_per_prompt,
            temperature=inpo.temperature,
            max_new_tokens=inpo.max_new_tokens,
            seed=train.seed + t,
        )
        world, device = self.state.world, self.kernel.device
        ranked = (
            sample_and_rank(self.engine, prompts, self.oracle, sampling) if world.is_main else None
        )
        pairs, self.stats = world.broadcast(ranked, device)
        if not pairs:
            raise ValueError(
                f"inpo iteration {t}: no prompt had a best response that beat its worst "
                f"(all {inpo.samples_per_prompt} samples scored the same); raise "
                "inpo.samples_per_prompt or inpo.temperature, or use a finer oracle"
            )
        self.examples = pairs_to_examples(pairs)
        size, pad = train.micro_batch_size * 2, self.state.pad_id
        reference, context = self.reference
        self.ref_cache = cache_logprobs(reference, self.examples, pad, size, context)
        self.prev_cache = cache_logprobs(self.kernel, self.examples, pad, size)  # π_t
        self.sampler = Sampler(len(self.examples), train.batch_size, train.seed + t, True)
        self.state.reset_optimizer(self.steps_per_iteration)
        self.position.iteration = t

    def finish_step(
        self, step: int, results: list[UpdateResult], seconds: float
    ) -> dict[str, float]:
        metrics = merge_results(results)
        metrics |= {"inpo/iteration": float(self.position.iteration)}
        metrics["tokens_per_s"] = metrics["tokens"] / seconds
        if step % self.steps_per_iteration == 0:  # the iteration's record, as before
            record: dict[str, Any] = {"iteration": self.position.iteration, **self.stats}
            record |= {f"final/{k}": v for k, v in metrics.items()}
            with (self.out_dir / "iterations.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        return metrics

    def evaluate(self, step: int) -> dict[str, float]:
        return in_loop_eval(self.state, self.config, self.out_dir, step)

    def checkpoint_due(self, step: int) -> bool:
        return step % self.steps_per_iteration == 0 and step < self.total_steps

    def close(self) -> None:
        """Nothing to release: the engine shares the policy."""
