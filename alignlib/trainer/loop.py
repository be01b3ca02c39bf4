"""The trainer: ``alignlib.Trainer(config).train()`` / ``alignlib train run.yaml``."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from alignlib.config.schema import RunConfig
from alignlib.data import Example
from alignlib.estimator import UnifiedEstimator
from alignlib.trainer.build import build_estimator, build_optimizer
from alignlib.trainer.checkpoint import (
    atomic_directory_write,
    latest_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    save_model,
    seed_everything,
    set_rng_state,
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
        base, self.tokenizer = load_policy(config.model)
        self.model: nn.Module = apply_lora(base, config.lora) if config.lora.enabled else base
        self.estimator: UnifiedEstimator = build_estimator(config.algorithm)
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
            model,
            examples,
            self.pad_id,
            train.micro_batch_size * 2,
            train.logprob_chunk_size,
            context,
        )

    def initial_reference(self) -> tuple[nn.Module, Callable[[], AbstractContextManager] | None]:
        """π_ref = the initial policy: the adapter-off model with LoRA (with the context that
        disables the adapter), else a frozen copy taken now."""
        if self.config.lora.enabled:
            return self.model, lambda: adapter_disabled(self.model)
        return frozen_copy(self.model), None

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
        live_ref = None
        if cfg.train.reference == "adapter" and cfg.lora.enabled:
            live_ref = lambda: adapter_disabled(self.model)  # noqa: E731
        inputs = StepInputs(
            self.model,
            self.estimator,
            self.pad_id,
            cfg.train.micro_batch_size,
            cfg.train.logprob_chunk_size,
            ref_cache,
            prev_cache,
            live_ref,
        )
        start = self._resume(out_dir, optimizer, scheduler, sampler) if cfg.checkpoint.resume else 0
        logger = RunLogger(out_dir, cfg.logging, total, start, cfg.model_dump())
        history: list[dict[str, float]] = []
        self.model.train()
        try:
            for step in range(start + 1, total + 1):
                began = time.perf_counter()
                batch = [examples[i] for i in sampler.next_batch()]
                metrics = accumulate_gradients(inputs, batch)
                grad_norm = self._clip(params)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                elapsed = time.perf_counter() - began
                metrics |= {
                    "grad_norm": grad_norm,
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
        self.save_final(out_dir)
        if cfg.logging.plot:
            plot_run(out_dir)
        return TrainResult(total, history[-1] if history else {}, out_dir, history)

    def _clip(self, params: list[nn.Parameter]) -> float:
        limit = self.config.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, limit if limit is not None else float("inf"))
        return float(norm)

    def _checkpoint(self, out_dir: Path, step: int, optimizer, scheduler, sampler: Sampler) -> None:
        state: dict[str, Any] = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(),
            "rng": rng_state(),
            "estimator": self.estimator.state_dict(),
        }
        save_checkpoint(
            out_dir, step, self.model, self.tokenizer, state, self.config.checkpoint.keep_last
        )

    def _resume(self, out_dir: Path, optimizer, scheduler, sampler: Sampler) -> int:
        path = latest_checkpoint(out_dir)
        if path is None:
            return 0
        state = torch.load(path / "trainer_state.pt", weights_only=False)
        load_weights(self.model, path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.estimator.load_state_dict(state["estimator"])
        return int(state["step"])

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
