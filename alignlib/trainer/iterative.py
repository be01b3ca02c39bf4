"""The preference-iterations source (`iterative:`): iterations t = 1..T as one run, for any
pairwise preference method (INPO, Zhang et al. ICLR 2025, whose loop this is; iterative / online
DPO; SPPO-style with π_ref = π_t). At the first step of iteration t it samples K responses per
prompt from π_t, ranks them with the oracle, and caches, for each (best, worst) pair, what the
method reads: log π_ref (the initial policy, or π_t with ``reference: previous``) and log π_t.
The iteration's steps then train π_{t+1} from π_t on those pairs with a fresh optimizer and
schedule, as each iteration of these papers is its own training run (``optimizer: continue``:
one optimizer over all iterations, online DPO)."""

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
from alignlib.trainer.offline import LogprobCache, Sampler, cache_logprobs, offline_minibatch
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


class IterativeSource:
    """``iterative.iterations`` × ``steps_per_iteration`` steps (train.max_steps per iteration,
    or train.epochs over the iteration's at most prompts_per_iteration pairs)."""

    def __init__(self, config: RunConfig) -> None:
        assert config.iterative is not None
        self.config, self.iterative = config, config.iterative
        data = config.data
        self.rows = load_rows(data.path, data.split, data.limit, data.prompt_field)
        if not self.rows or "prompt" not in self.rows[0]:
            raise ValueError(
                f"iterative: data.path {config.data.path} must hold rows with a 'prompt' field"
            )
        self.per_iteration = self.iterative.prompts_per_iteration or len(self.rows)
        train = config.train
        self.steps_per_iteration = train.max_steps or train.epochs * math.ceil(
            self.per_iteration / train.batch_size
        )
        self.total_steps = self.iterative.iterations * self.steps_per_iteration
        self.fresh_optimizer = self.iterative.optimizer == "fresh"
        # The schedule spans one iteration (each restarts it) or the whole run.
        self.optimizer_steps = (
            self.steps_per_iteration if self.fresh_optimizer else self.total_steps
        )
        self.position = IterationPosition()
        self.sampler: Sampler | None = None

    def prepare(self, state: TrainState) -> None:
        """Before a resume loads trained weights: the initial policy is π_ref by default."""
        self.state, self.kernel = state, state.kernel()
        # The initial policy is kept (a frozen copy without LoRA) only when the method reads it.
        reads_ref = "ref_logprobs" in state.estimator.requirements()
        initial = reads_ref and self.iterative.reference == "initial"
        self.reference = state.reference_kernel() if initial else None
        if not state.world.is_main:  # rank 0 samples and ranks; the others get its pairs
            return
        self.oracle = resolve_oracle(self.iterative.oracle, state.placement.device)
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
        """Sample from π_t, rank, cache log π_ref and log π_t; a fresh optimizer and schedule
        unless one continues over the whole run."""
        train = self.config.train
        pairs = self.sample_pairs(t)
        self.examples = pairs_to_examples(pairs)
        self.ref_cache, self.prev_cache = self.cache_pairs_logprobs()
        self.sampler = Sampler(len(self.examples), train.batch_size, train.seed + t, True)
        if self.fresh_optimizer:
            self.state.reset_optimizer(self.steps_per_iteration)
        self.position.iteration = t

    def sample_pairs(self, t: int) -> list[Any]:
        """Iteration t's (best, worst) pairs from π_t; while no prompt gives one (all samples
        tie), up to `iterative.max_tries` rounds, each on the next prompts with its own seed.
        Seeded by (t, round): a resumed run samples the same pairs."""
        iterative, seed = self.iterative, self.config.train.seed
        world, device = self.state.world, self.kernel.device
        for attempt in range(iterative.max_tries):
            first = ((t - 1 + attempt) * self.per_iteration) % len(self.rows)
            prompts = (self.rows + self.rows)[first : first + self.per_iteration]
            sampling = SamplingParams(
                n=iterative.samples_per_prompt,
                temperature=iterative.temperature,
                max_new_tokens=iterative.max_new_tokens,
                seed=seed + t + 7919 * attempt,
            )
            ranked = None
            if world.is_main:
                ranked = sample_and_rank(self.engine, prompts, self.oracle, sampling)
            pairs, self.stats = world.broadcast(ranked, device)
            if pairs:
                self.stats["rounds"] = attempt + 1
                return pairs
        raise ValueError(
            f"iterative: iteration {t}: no prompt had a best response that beat its worst in "
            f"{iterative.max_tries} rounds (all {iterative.samples_per_prompt} samples of each "
            "scored the same); raise iterative.max_tries, samples_per_prompt or temperature, or "
            "use a finer oracle"
        )

    def cache_pairs_logprobs(self) -> tuple[LogprobCache | None, LogprobCache | None]:
        """log π_ref and log π_t of the iteration's pairs, each only when the method reads it
        (a reference-free method reads neither). π_ref is the initial policy when ``prepare``
        kept it, else π_t itself (``reference: previous``)."""
        needs = self.state.estimator.requirements()
        size, pad = self.config.train.micro_batch_size * 2, self.state.pad_id
        reads_ref, reads_prev = "ref_logprobs" in needs, "prev_logprobs" in needs
        pi_t = None
        if reads_prev or (reads_ref and self.reference is None):
            pi_t = cache_logprobs(self.kernel, self.examples, pad, size)
        if self.reference is not None:
            reference, context = self.reference
            return cache_logprobs(reference, self.examples, pad, size, context), pi_t
        return (pi_t if reads_ref else None), (pi_t if reads_prev else None)

    def finish_step(
        self, step: int, results: list[UpdateResult], seconds: float
    ) -> dict[str, float]:
        metrics = merge_results(results)
        metrics |= {"iterative/iteration": float(self.position.iteration)}
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
        return step % self.steps_per_iteration == 0

    def close(self) -> None:
        """Nothing to release: the engine shares the policy."""
