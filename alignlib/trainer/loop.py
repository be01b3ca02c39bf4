"""The trainer: ``alignlib.Trainer(config).train()`` / ``alignlib train run.yaml``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from alignlib.config.schema import RunConfig
from alignlib.data import Example
from alignlib.device import Placement
from alignlib.estimator import UnifiedEstimator
from alignlib.trainer.build import build_estimator, build_optimizer
from alignlib.trainer.checkpoint import (
    atomic_directory_write,
    save_checkpoint,
    save_model,
    seed_everything,
)
from alignlib.trainer.logs import RunLogger, plot_run
from alignlib.trainer.model import adapter_disabled, apply_lora, frozen_copy, load_policy
from alignlib.trainer.offline import (
    LogprobCache,
    Sampler,
    StepInputs,
    accumulate_gradients,
    cache_logprobs,
    load_examples,
)
from alignlib.trainer.preflight import check_run
from alignlib.trainer.resume import checkpoint_state, resume_from_checkpoint
from alignlib.trainer.run_dir import prepare_output_dir
from alignlib.trainer.step import Context, LogprobKernel, OptimizerStep


@dataclass
class TrainResult:
    steps: int
    final_metrics: dict[str, float]
    output_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Offline training (SFT, the DPO family, TPO, BVPO) and INPO's online iterations."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.output_dir = Path(config.output_dir)
        seed_everything(config.train.seed)
        self.placement = Placement.resolve(config.model.device, config.model.precision)
        self.estimator: UnifiedEstimator = build_estimator(config.algorithm)
        # Refuse a wrong objective, bad data or an unreachable cluster before the model loads.
        self.data_metrics: dict[str, float] = check_run(config, self.estimator)
        base, self.tokenizer = load_policy(config.model, self.placement)
        self.model: nn.Module = apply_lora(base, config.lora) if config.lora.enabled else base
        self.examples: list[Example] = []
        self.format = ""

    def train(self) -> TrainResult:
        if self.config.rollout is not None:
            from alignlib.trainer.online import run_online

            return run_online(self)
        if self.config.inpo is not None:
            from alignlib.trainer.inpo import run_inpo

            return run_inpo(self)
        self.examples, self.format = load_examples(
            self.config.data, self.tokenizer, self.config.model.chat_template
        )
        return self.fit(self.examples, ref_cache=self.reference_cache(self.examples))

    def reference_cache(self, examples: list[Example]) -> LogprobCache | None:
        """Reference log-probs computed once (frozen initial model, or the adapter-off model)."""
        train = self.config.train
        if "ref_logprobs" not in self.estimator.requirements() or train.reference != "precompute":
            return None
        model, context = self.initial_reference()
        return cache_logprobs(
            self.kernel(model), examples, self.pad_id, train.micro_batch_size * 2, context
        )

    def initial_reference(self) -> tuple[nn.Module, Context | None]:
        """π_ref = the initial policy: the adapter-off model with LoRA (with the context that
        disables the adapter), else a frozen copy taken now (in bf16 under bf16-mixed)."""
        if self.config.lora.enabled:
            return self.model, lambda: adapter_disabled(self.model)
        return frozen_copy(self.model, self.placement.frozen_dtype), None

    def kernel(self, model: nn.Module | None = None, temperature: float = 1.0) -> LogprobKernel:
        """The micro-batch kernel of ``model`` (default: the policy) on the run's device."""
        chunk = self.config.train.logprob_chunk_size
        return LogprobKernel(model or self.model, self.placement, chunk, temperature)

    @property
    def pad_id(self) -> int:
        tok: PreTrainedTokenizerBase = self.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    def fit(
        self,
        examples: list[Example],
        ref_cache: LogprobCache | None = None,
        prev_cache: LogprobCache | None = None,
        output_dir: Path | None = None,
    ) -> TrainResult:
        """The loop: sample a mini-batch, accumulate exact gradients, clip, step, log, save."""
        cfg, out_dir = self.config, output_dir or self.output_dir
        sampler = Sampler(len(examples), cfg.train.batch_size, cfg.train.seed, cfg.data.shuffle)
        total = cfg.train.max_steps or cfg.train.epochs * sampler.steps_per_epoch()
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer, scheduler = build_optimizer(params, cfg.optim, total)
        optimizer_step = OptimizerStep(
            params, optimizer, scheduler, cfg.optim.grad_clip, nonfinite=cfg.train.nonfinite
        )
        live_ref = None
        if cfg.train.reference == "adapter" and cfg.lora.enabled:
            live_ref = lambda: adapter_disabled(self.model)  # noqa: E731
        inputs = StepInputs(
            self.kernel(),
            self.estimator,
            self.pad_id,
            cfg.train.micro_batch_size,
            ref_cache,
            prev_cache,
            live_ref,
        )
        prepare_output_dir(out_dir, cfg.checkpoint.resume)  # an earlier run is moved aside
        start = self._resume(out_dir, optimizer, scheduler, sampler) if cfg.checkpoint.resume else 0
        logger = RunLogger(out_dir, cfg.logging, total, start, cfg.model_dump())
        history: list[dict[str, float]] = []
        self.model.train()
        try:
            for step in range(start + 1, total + 1):
                began = time.perf_counter()
                batch = [examples[i] for i in sampler.next_batch()]
                metrics = accumulate_gradients(inputs, batch) | self.data_metrics
                metrics |= optimizer_step(step)
                elapsed = time.perf_counter() - began
                metrics |= {
                    "lr": scheduler.get_last_lr()[0],
                    "epoch": sampler.epoch,
                    "tokens_per_s": metrics["tokens"] / elapsed,
                }
                if cfg.eval is not None and cfg.eval.every and step % cfg.eval.every == 0:
                    from alignlib.eval.runner import evaluate_in_loop

                    eval_cfg = cfg.eval
                    if eval_cfg.output_dir is None:  # keep RUN/eval/step-N/results.json
                        eval_cfg = eval_cfg.model_copy(update={"output_dir": str(out_dir / "eval")})
                    metrics |= evaluate_in_loop(self.model, self.tokenizer, eval_cfg, step)
                logger.log(step, metrics)
                history.append({"step": step, **metrics})
                every = cfg.checkpoint.every
                if every and step % every == 0 and step < total:
                    self._checkpoint(out_dir, step, optimizer, scheduler, sampler)
        finally:
            logger.close()
        optimizer_step.check_trained(total - start)
        self.save_final(out_dir)
        if cfg.logging.plot:
            plot_run(out_dir)
        return TrainResult(total, history[-1] if history else {}, out_dir, history)

    def _checkpoint(self, out_dir: Path, step: int, optimizer, scheduler, sampler: Sampler) -> None:
        """checkpoints/step-N: weights plus a weights_only-safe state with the config."""
        state = checkpoint_state(self.config, step, optimizer, scheduler, sampler, self.estimator)
        save_checkpoint(
            out_dir, step, self.model, self.tokenizer, state, self.config.checkpoint.keep_last
        )

    def _resume(self, out_dir: Path, optimizer, scheduler, sampler: Sampler) -> int:
        """The newest loadable checkpoint of this run (config checked, changes applied)."""
        return resume_from_checkpoint(
            out_dir, self.config, self.model, optimizer, scheduler, sampler, self.estimator
        )

    def save_final(self, out_dir: Path) -> None:
        """final/: the model (or adapter) in Hugging Face format; merged/ when asked."""
        atomic_directory_write(
            out_dir / "final", lambda tmp: save_model(tmp, self.model, self.tokenizer)
        )
        if self.config.lora.enabled and self.config.lora.save_merged:
            merged = frozen_copy(self.model).merge_and_unload()
            atomic_directory_write(
                out_dir / "merged", lambda tmp: save_model(tmp, merged, self.tokenizer)
            )
