"""Online RL (GRPO, Dr. GRPO, PPO, Clip-Cov, KL-Cov, HPT, LUFFY). One step, top to bottom:
prompts ← data; samples ← rollout.generate(prompts, n); rewards ← reward functions;
rows ← routing (HPT gate / LUFFY demonstration); optional dynamic sampling; old (and ref)
log-probs; for each of k mini-batches of whole groups: prepare, micro-batch backward, clip,
step; weights → engine; held-out accuracy and benchmarks when due; checkpoint."""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import torch

from alignlib.config.schema import RunConfig
from alignlib.data import load_rows
from alignlib.data.collate import prompt_ids as encode_prompt
from alignlib.device import HOST
from alignlib.estimator import Role
from alignlib.trainer.build import build_optimizer
from alignlib.trainer.logs import RunLogger, plot_run
from alignlib.trainer.offline import Sampler
from alignlib.trainer.online_engine import EngineHandle, build_engine, heldout_accuracy
from alignlib.trainer.online_rollout import (
    RewardModel,
    Rollouts,
    TrainRows,
    build_rows,
    demonstration_ids,
    generate,
    informative_groups,
    resolve_routing,
    sampling_params,
    score_rollouts,
    select_groups,
)
from alignlib.trainer.online_update import (
    RowTensors,
    Updater,
    check_online_estimator,
    collate_rows,
    minibatch_rows,
    needs_live_logprobs,
    policy_logprobs,
)
from alignlib.trainer.step import Context, LogprobKernel, OptimizerStep

if TYPE_CHECKING:
    from alignlib.trainer.loop import Trainer, TrainResult


class OnlineRun:
    """The state of one online run; ``step`` is one rollout batch and its k optimizer steps."""

    def __init__(self, trainer: Trainer) -> None:
        cfg: RunConfig = trainer.config
        assert cfg.rollout is not None
        self.trainer, self.cfg, self.rollout, self.online = trainer, cfg, cfg.rollout, cfg.online
        self.model, self.tokenizer = trainer.model, trainer.tokenizer
        check_online_estimator(trainer.estimator, cfg.algorithm.name)
        self.routing = resolve_routing(self.online, cfg.algorithm.name)
        if self.routing == "luffy" and self.rollout.n < 2:
            raise ValueError("online.routing luffy replaces one of n rollouts: set rollout.n >= 2")
        self.rows = load_rows(cfg.data.path, cfg.data.split, cfg.data.limit)
        if not self.rows or "prompt" not in self.rows[0]:
            raise ValueError(f"data.path {cfg.data.path}: online training needs rows with 'prompt'")
        self.rewards = RewardModel(
            self.online.rewards,
            self.online.correct_threshold,
            allow_nonfinite=cfg.train.nonfinite == "skip",
        )
        self.rewards.check(self.rows[0], f"data.path {cfg.data.path}")
        if self.routing != "none":
            demonstration_ids(
                self.tokenizer, self.rows[0], self.online, f"data.path {cfg.data.path}"
            )
        self.sampler = Sampler(
            len(self.rows), self.online.prompts_per_step, cfg.train.seed, cfg.data.shuffle
        )
        self.total = cfg.train.max_steps or cfg.train.epochs * self.sampler.steps_per_epoch()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_optimizer(
            self.params, cfg.optim, self.total * self.online.mini_batches
        )
        self.kernel = trainer.kernel(temperature=self.rollout.temperature)
        self.reference = self._reference()
        self.live = needs_live_logprobs(trainer.estimator)
        self.heldout = self._heldout_set()

    # ----------------------------------------------------------------------------- set-up
    def _reference(self) -> tuple[LogprobKernel, Context | None] | None:
        """π_ref for a KL term: the adapter-off policy with LoRA, else a frozen initial copy."""
        if "ref_logprobs" not in self.trainer.estimator.requirements():
            return None
        model, context = self.trainer.initial_reference()
        return self.trainer.kernel(model, self.rollout.temperature), context

    def _heldout_set(self) -> tuple[list[list[int]], list[str]] | None:
        spec = self.online.heldout
        if spec.data is None:
            return None
        rows = load_rows(spec.data, "train", spec.size)
        if not rows or not all("prompt" in r and "answer" in r for r in rows):
            raise ValueError(f"online.heldout.data {spec.data}: rows need 'prompt' and 'answer'")
        return [self.prompt_tokens(r) for r in rows], [str(r["answer"]) for r in rows]

    def prompt_tokens(self, row: dict[str, Any]) -> list[int]:
        ids = encode_prompt(self.tokenizer, row["prompt"], self.cfg.model.chat_template)
        return ids[-self.online.max_prompt_length :]

    def demo_tokens(self, row: dict[str, Any]) -> list[int]:
        return demonstration_ids(
            self.tokenizer, row, self.online, f"data.path {self.cfg.data.path}"
        )

    # ------------------------------------------------------------------------------ stages
    def sample_prompts(self) -> list[dict[str, Any]]:
        return [self.rows[i] for i in self.sampler.next_batch()]

    def rollout_and_score(
        self, engine: EngineHandle, step: int, attempt: int
    ) -> tuple[Rollouts, TrainRows, torch.Tensor]:
        """prompts ← data; samples ← generate; rewards ← reward functions; rows ← routing."""
        prompts = self.sample_prompts()
        prompt_ids = [self.prompt_tokens(r) for r in prompts]
        # Seeded per (run seed, step, attempt): a resumed run samples exactly what it would have.
        seed = (self.cfg.train.seed * 1_000_003 + step * 101 + attempt) & 0x7FFF_FFFF
        generations, seconds = generate(
            engine.engine, prompt_ids, sampling_params(self.rollout, seed)
        )
        rollouts = score_rollouts(self.rewards, prompts, prompt_ids, generations, seconds)
        demo_rewards = None
        if self.routing == "luffy":
            demos = [self.demo_tokens(r) for r in prompts]
            texts = [self.tokenizer.decode(d, skip_special_tokens=True) for d in demos]
            demo_rewards, _ = self.rewards.score(texts, [len(d) for d in demos], prompts)
        rows, sft = build_rows(
            rollouts, self.routing, self.online.hpt_gamma, self.demo_tokens, demo_rewards
        )
        return rollouts, rows, sft

    def collect(self, engine: EngineHandle, step: int) -> tuple[TrainRows, dict[str, float]]:
        """Rollouts for one step; with dynamic sampling, more rounds until enough groups."""
        wanted = self.online.prompts_per_step
        dynamic = self.online.dynamic_sampling
        kept, all_rollouts, sft_flags = TrainRows(), [], []
        groups_seen = groups_kept = 0
        for attempt in range(dynamic.max_tries if dynamic.enabled else 1):
            rollouts, rows, sft = self.rollout_and_score(engine, step, attempt)
            all_rollouts.append(rollouts)
            sft_flags.append(sft)
            groups = sorted(set(rows.group_ids))
            if dynamic.enabled:
                groups = informative_groups(rows, self.routing)
            groups_seen += len(rollouts.rows)
            room = wanted - groups_kept
            take = groups[:room] if dynamic.enabled else groups
            kept.extend(select_groups(rows, take), group_offset=groups_kept)
            groups_kept += len(take)
            if groups_kept >= wanted:
                break
        if not len(kept):
            raise ValueError(  # the reward or the sampling settings: a user fix
                f"step {step}: every group had all-equal rewards in "
                f"{dynamic.max_tries} rounds; raise online.dynamic_sampling.max_tries or "
                "rollout.n, or check the reward"
            )
        metrics = rollout_metrics(all_rollouts, torch.cat(sft_flags))
        if dynamic.enabled:
            metrics["rollout/filtered_frac"] = 1 - groups_kept / max(1, groups_seen)
            metrics["rollout/rounds"] = float(len(all_rollouts))
        return kept, metrics

    def behaviour_logprobs(
        self, tensors: RowTensors
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """old ← policy (no grad) over all rows, unless on-policy (one mini-batch, no token
        selection from live log-probs: the update's own forward gives them for free);
        ref ← π_ref when the estimator needs it."""
        every = torch.arange(tensors.num_rows, device=HOST)
        size = self.online.micro_batch_size
        old = None
        if self.online.mini_batches > 1 or self.live:
            old, _ = policy_logprobs(self.kernel, tensors, every, size)
        ref = None
        if self.reference is not None:
            kernel, context = self.reference
            ref, _ = policy_logprobs(kernel, tensors, every, size, context)
        return old, ref

    def update(
        self,
        updater: Updater,
        tensors: RowTensors,
        old: torch.Tensor | None,
        ref: torch.Tensor | None,
        step: int,
    ) -> tuple[dict[str, float], torch.Tensor]:
        """k optimizer steps on mini-batches of whole groups; metrics averaged over them.
        Also returns the [R, W] token entropy the training forwards saw (on the device)."""
        parts = minibatch_rows(tensors.group_ids, self.online.mini_batches)
        totals: dict[str, float] = {}
        entropy = torch.zeros(tensors.input_ids.shape, device=self.kernel.device)
        for j, indices in enumerate(parts):
            on_device = indices.to(self.kernel.device)
            current = None if old is None else old[on_device]
            if self.live and j > 0:
                # Clip-Cov/KL-Cov select tokens from the present policy, which has moved.
                current, _ = policy_logprobs(
                    self.kernel, tensors, indices, self.online.micro_batch_size
                )
            old_part = None if old is None else old[on_device]
            ref_part = None if ref is None else ref[on_device]
            metrics, entropy[on_device] = updater.step(
                tensors, indices, old_part, ref_part, current, step
            )
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value / len(parts)
        totals["skipped_steps"] = totals.get("skipped_steps", 0.0) * len(parts)
        return totals, entropy

    def evaluate(self, engine: EngineHandle, step: int) -> dict[str, float]:
        """Held-out accuracy and in-loop benchmarks, each when it is due at ``step``."""
        metrics: dict[str, float] = {}
        if self.heldout is not None and self.heldout_due(step):
            ids, answers = self.heldout
            cap = self.online.heldout.max_new_tokens or self.rollout.max_new_tokens
            metrics |= heldout_accuracy(engine.engine, ids, answers, cap)
        eval_cfg = self.cfg.eval
        if eval_cfg is not None and eval_cfg.every and step > 0 and step % eval_cfg.every == 0:
            from alignlib.eval.runner import evaluate_in_loop

            # Through the rollout engine: it holds the current weights (vLLM / Ray included).
            metrics |= evaluate_in_loop(
                self.model, self.tokenizer, eval_cfg, step, engine=engine.engine
            )
        return metrics

    def heldout_due(self, step: int) -> bool:
        every = self.online.heldout.every
        return self.heldout is not None and (
            step in (0, self.total) or (every is not None and step % every == 0)
        )


def rollout_metrics(rollouts: list[Rollouts], sft: torch.Tensor) -> dict[str, float]:
    rewards = torch.cat([r.rewards.flatten() for r in rollouts])
    correct = torch.cat([r.correct.flatten().float() for r in rollouts])
    lengths = [len(g.token_ids) for r in rollouts for gens in r.generations for g in gens]
    tokens = sum(r.num_tokens for r in rollouts)
    seconds = sum(r.seconds for r in rollouts)
    truncated = [
        g.finish_reason == "length" for r in rollouts for gens in r.generations for g in gens
    ]
    return {
        "rollout/reward_mean": float(rewards.mean()),
        "rollout/reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        "rollout/accuracy": float(correct.mean()),
        "rollout/response_length": sum(lengths) / max(1, len(lengths)),
        "rollout/truncated_frac": sum(truncated) / max(1, len(truncated)),
        "rollout/tokens_per_s": tokens / max(seconds, 1e-9),
        "time/rollout_s": seconds,
        "hpt/sft_frac": float(sft.float().mean()) if sft.numel() else 0.0,
    }


def run_online(trainer: Trainer) -> TrainResult:
    from alignlib.trainer.loop import TrainResult

    run = OnlineRun(trainer)
    cfg, out_dir = run.cfg, trainer.output_dir
    from alignlib.trainer.run_dir import prepare_output_dir

    prepare_output_dir(out_dir, cfg.checkpoint.resume)  # an earlier run is moved aside
    start = 0
    if cfg.checkpoint.resume:
        start = trainer._resume(out_dir, run.optimizer, run.scheduler, run.sampler)
    optimizer_step = OptimizerStep(
        run.params,
        run.optimizer,
        run.scheduler,
        cfg.optim.grad_clip,
        run.online.skip_grad_norm,
        cfg.train.nonfinite,
    )
    updater = Updater(run.kernel, trainer.estimator, optimizer_step, run.online.micro_batch_size)
    history: list[dict[str, float]] = []
    with ExitStack() as stack:
        # Built after a resume has loaded the weights, so a separate engine starts in sync.
        engine = build_engine(
            run.rollout,
            run.model,
            run.tokenizer,
            out_dir,
            trainer.placement,
            cfg.model.chat_template,
        )
        stack.callback(engine.shutdown)
        logger = RunLogger(out_dir, cfg.logging, run.total, start, cfg.model_dump())
        stack.callback(logger.close)
        initial = run.evaluate(engine, 0) if start == 0 else {}
        if initial:  # the untrained policy's held-out accuracy, for comparison
            logger.log(0, initial)
            history.append({"step": 0, **initial})
        run.model.train()
        for step in range(start + 1, run.total + 1):
            began = time.perf_counter()
            rows, metrics = run.collect(engine, step)
            tensors = collate_rows(rows, trainer.pad_id)
            engine.release_memory(run.online.empty_cache)  # vLLM sleep mode, when configured
            logprob_began = time.perf_counter()
            old, ref = run.behaviour_logprobs(tensors)
            update_began = time.perf_counter()
            update_metrics, entropy = run.update(updater, tensors, old, ref, step)
            metrics |= update_metrics
            sync_began = time.perf_counter()
            engine.sync(run.model)
            done = time.perf_counter()
            trained_tokens = float(tensors.attention.sum())
            samples = (tensors.roles == int(Role.SAMPLE)).unsqueeze(-1) * tensors.mask
            if samples.any():  # the policy's entropy on its own samples (entropy collapse)
                samples = samples.to(entropy.device)
                metrics["rollout/entropy"] = float((entropy * samples).sum() / samples.sum())
            metrics |= {
                "train/rows": float(tensors.num_rows),
                "train/tokens_per_s": trained_tokens / (sync_began - logprob_began),
                "lr": run.scheduler.get_last_lr()[0],
                "epoch": float(run.sampler.epoch),
                "time/logprob_s": update_began - logprob_began,
                "time/update_s": sync_began - update_began,
                "time/sync_s": done - sync_began,
                "time/step_s": done - began,
            }
            metrics |= run.evaluate(engine, step)
            logger.log(step, metrics)
            history.append({"step": step, **metrics})
            every = cfg.checkpoint.every
            if every and step % every == 0 and step < run.total:
                trainer._checkpoint(out_dir, step, run.optimizer, run.scheduler, run.sampler)
    optimizer_step.check_trained(run.total - start)
    trainer.save_final(out_dir)
    if cfg.logging.plot:
        plot_run(out_dir)
    return TrainResult(run.total, history[-1] if history else {}, out_dir, history)
