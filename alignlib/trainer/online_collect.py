"""One online step's rows: prompts ← data; samples ← the engine; rewards ← the reward
functions; rows ← the preset's router; with dynamic sampling, more rounds until enough groups
carry a signal. The data set, reward functions and prompt sampler are checked once, here, before
the model loads anything."""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import replace
from typing import Any

from alignlib.config.schema import RunConfig
from alignlib.console import warn
from alignlib.data import load_rows
from alignlib.data.collate import prompt_ids as encode_prompt
from alignlib.device import resolve_device
from alignlib.estimator import RowPlan
from alignlib.estimator.routing import Router
from alignlib.eval.metrics import doubling_ks, pass_at_k
from alignlib.rewards import RewardError, extract_boxed, grade_many
from alignlib.rollout.base import Generation, RolloutEngine, SamplingParams
from alignlib.rollout.episode_router import episodes_for
from alignlib.trainer.completions_log import CompletionLog
from alignlib.trainer.offline import Sampler
from alignlib.trainer.online_engine import EngineHandle
from alignlib.trainer.online_rewards import RewardModel, online_rows
from alignlib.trainer.online_rollout import (
    Rollouts,
    TrainRows,
    build_rows,
    demonstration_ids,
    informative_groups,
    sampling_params,
    score_rollouts,
    select_groups,
)
from alignlib.trainer.rollout_metrics import environment_metrics, rollout_metrics

Heldout = tuple[list[list[int]], list[dict[str, Any]]]
"""(prompt token ids, data rows) of the held-out prompts."""


def step_seed(seed: int, step: int, salt: int) -> int:
    """The sampling seed of (run seed, step, salt): a resumed run samples what it would have."""
    return (seed * 1_000_003 + step * 101 + salt) & 0x7FFF_FFFF


class RolloutCollector:
    """The rows of each step from the prompt set (``data``), the rewards and the router."""

    def __init__(
        self,
        config: RunConfig,
        tokenizer: Any,
        router: Router,
        distinguishing: Collection[str] = (),
    ) -> None:
        """``distinguishing``: row fields besides the total reward the advantage reads
        (``UnifiedEstimator.distinguishing_fields``): dynamic sampling keeps a group whose
        rows differ there; ``baseline_rewards``: a greedy completion per prompt is sampled
        and scored for them."""
        assert config.rollout is not None
        self.config, self.rollout, self.online = config, config.rollout, config.online
        self.tokenizer, self.router, self.distinguishing = tokenizer, router, distinguishing
        data, where = config.data, f"data.path {config.data.path}"
        self.rows = online_rows(load_rows(data.path, data.split, data.limit), data, data.path)
        if not self.rows or "prompt" not in self.rows[0]:
            raise ValueError(f"{where}: online training needs rows with 'prompt'")
        online = self.online  # one environment, or each row's; None: one turn per completion
        self.episodes = episodes_for(
            online.environment, online.environments, online.environment_field, tokenizer
        )
        if self.episodes is not None and self.episodes.has_tools and not config.model.chat_template:
            raise ValueError(
                "online.environment: its tools are shown to the model by the chat template, and "
                "model.chat_template is false; set it to true"
            )
        self.rewards = RewardModel(
            self.online.rewards,
            self.online.correct_threshold,
            allow_nonfinite=config.train.nonfinite == "skip",
            environment_rewards=self.episodes is not None,  # get_reward or turn rewards
            episodes=self.episodes is not None,
            device=resolve_device(config.model.device),  # where learned reward models load
        )
        self.rewards.check(self.rows[0], where)
        if router.needs_demonstrations:
            demonstration_ids(tokenizer, self.rows[0], self.online, where)
        self.sampler = Sampler(
            len(self.rows), self.online.prompts_per_step, config.train.seed, data.shuffle
        )
        self.heldout_scored = True
        """Whether held-out completions are scored with ``online.rewards`` too (their rows hold
        the columns the rewards read)."""
        self.log: CompletionLog | None = None
        """Where the sampled completions are written (``logging.completions``), when set."""

    def heldout_set(self) -> Heldout | None:
        """(prompt ids, rows) of ``online.heldout.data``, or None when it is not set."""
        spec = self.online.heldout
        if spec.data is None:
            return None
        rows = online_rows(load_rows(spec.data, "train", spec.size), self.config.data, spec.data)
        if not rows or not all("prompt" in r and "answer" in r for r in rows):
            raise ValueError(f"online.heldout.data {spec.data}: rows need 'prompt' and 'answer'")
        try:  # the run's own rewards too, when the held-out rows hold what they read
            self.rewards.check_rows(rows, f"online.heldout.data {spec.data}")
        except RewardError as exc:
            warn(f"heldout/reward_mean is not logged: {exc}")
            self.heldout_scored = False
        return [self.prompt_tokens(r) for r in rows], rows

    def sample(
        self,
        engine: RolloutEngine,
        prompt_ids: list[list[int]],
        rows: list[dict[str, Any]],
        sampling: SamplingParams,
    ) -> tuple[list[list[Generation]], float]:
        """``sampling.n`` completions per prompt (whole episodes with an environment) and the
        wall time they took."""
        began = time.perf_counter()
        if self.episodes is None:
            generations = engine.generate(prompt_ids, sampling)
        else:
            generations = self.episodes.run(engine, prompt_ids, rows, sampling, self.prompt_tokens)
        return generations, time.perf_counter() - began

    def heldout_accuracy(
        self, engine: RolloutEngine, heldout: Heldout, cap: int, step: int
    ) -> dict[str, float]:
        """Greedy accuracy on held-out prompts (the same episodes training samples), with the
        share of boxed answers, the length and the run's own mean reward (`online.rewards`, which
        need not be math); with ``online.heldout.samples`` > 1, pass@k of
        that many sampled completions too."""
        prompt_ids, rows = heldout
        greedy = SamplingParams(temperature=0, max_new_tokens=cap)
        generations, _ = self.sample(engine, prompt_ids, rows, greedy)
        texts = [gens[0].text for gens in generations]
        correct = grade_many(texts, [str(r["answer"]) for r in rows])
        count = max(1, len(texts))
        metrics = {
            "heldout/accuracy": sum(correct) / count,
            "heldout/boxed_frac": sum(extract_boxed(t) is not None for t in texts) / count,
            "heldout/response_length": sum(len(g[0].token_ids) for g in generations) / count,
        }
        if self.heldout_scored:
            scored = score_rollouts(
                self.rewards, rows, prompt_ids, generations, 0.0, self.tokenizer
            )
            metrics["heldout/reward_mean"] = float(scored.rewards.mean())
        if self.episodes is not None:
            metrics["heldout/turns"] = sum(g[0].turns for g in generations) / count
        if self.online.heldout.samples > 1:
            metrics |= self.heldout_pass_at_k(engine, heldout, cap, step)
        return metrics

    def heldout_pass_at_k(
        self, engine: RolloutEngine, heldout: Heldout, cap: int, step: int
    ) -> dict[str, float]:
        """`heldout/pass@k` for k = 1, 2, 4, … ≤ N of N completions sampled per prompt."""
        prompt_ids, rows = heldout
        n = self.online.heldout.samples
        seed = step_seed(self.config.train.seed, step, salt=7_919)  # not a training round's
        sampling = replace(sampling_params(self.rollout, seed), n=n, max_new_tokens=cap)
        generations, _ = self.sample(engine, prompt_ids, rows, sampling)
        texts = [g.text for gens in generations for g in gens]
        answers = [str(r["answer"]) for r in rows for _ in range(n)]
        verdicts = grade_many(texts, answers)
        right = [sum(verdicts[p * n : (p + 1) * n]) for p in range(len(rows))]
        ks = [1, *doubling_ks(n)]
        count = max(1, len(rows))
        return {f"heldout/pass@{k}": sum(pass_at_k(n, c, k) for c in right) / count for k in ks}

    def prompt_tokens(self, row: dict[str, Any]) -> list[int]:
        tools = self.episodes.tools_for(row) if self.episodes is not None else None
        ids = encode_prompt(self.tokenizer, row["prompt"], self.config.model.chat_template, tools)
        limit = self.online.max_prompt_length
        if tools and len(ids) > limit:  # the start is cut, and the tool list is at the start
            raise ValueError(
                f"online.max_prompt_length: a prompt with the environment's tool list is "
                f"{len(ids)} tokens, more than {limit}, and cutting it would drop the tools; "
                "raise online.max_prompt_length"
            )
        return ids[-limit:]

    def demo_tokens(self, row: dict[str, Any]) -> list[int]:
        return demonstration_ids(
            self.tokenizer, row, self.online, f"data.path {self.config.data.path}"
        )

    def rollout_and_score(
        self, engine: EngineHandle, step: int, attempt: int
    ) -> tuple[Rollouts, TrainRows, RowPlan]:
        """prompts ← data; samples ← generate; rewards ← reward functions; rows ← the router."""
        prompts = [self.rows[i] for i in self.sampler.next_batch()]
        prompt_ids = [self.prompt_tokens(r) for r in prompts]
        # Seeded per (run seed, step, attempt): a resumed run samples exactly what it would have.
        sampling = sampling_params(self.rollout, step_seed(self.config.train.seed, step, attempt))
        generations, seconds = self.sample(engine.engine, prompt_ids, prompts, sampling)
        rollouts = score_rollouts(
            self.rewards, prompts, prompt_ids, generations, seconds, self.tokenizer
        )
        if "baseline_rewards" in self.distinguishing:
            rollouts = self.with_greedy_baselines(engine.engine, rollouts)
        demo_rewards = None
        if self.router.scores_demonstrations:
            demos = [self.demo_tokens(r) for r in prompts]
            texts = [self.tokenizer.decode(d, skip_special_tokens=True) for d in demos]
            demo_rewards = self.rewards.score(texts, [len(d) for d in demos], prompts).total
        plan = self.router.route(rollouts.rewards, rollouts.correct, demo_rewards)
        rows = build_rows(rollouts, plan, self.demo_tokens, self.online.overlong_filter)
        return rollouts, rows, plan

    def with_greedy_baselines(self, engine: RolloutEngine, rollouts: Rollouts) -> Rollouts:
        """``rollouts`` with the reward of one greedy completion per prompt, sampled and
        scored like the rollouts (ReMax's baseline). Its time is left out of ``seconds``, which
        divides only the sampled rollouts' tokens (``rollout/tokens_per_s``); the step's time
        includes it."""
        greedy = SamplingParams(temperature=0, max_new_tokens=self.rollout.max_new_tokens)
        prompts, prompt_ids = rollouts.rows, rollouts.prompt_ids
        generations, _ = self.sample(engine, prompt_ids, prompts, greedy)
        scored = score_rollouts(self.rewards, prompts, prompt_ids, generations, 0.0, self.tokenizer)
        return replace(rollouts, baselines=scored.rewards[:, 0])

    def collect(self, engine: EngineHandle, step: int) -> tuple[TrainRows, dict[str, float]]:
        """Rollouts for one step; with dynamic sampling, more rounds until enough groups."""
        wanted = self.online.prompts_per_step
        dynamic = self.online.dynamic_sampling
        kept, all_rollouts, plans = TrainRows(), [], []
        groups_seen = groups_kept = 0
        for attempt in range(dynamic.max_tries if dynamic.enabled else 1):
            rollouts, rows, plan = self.rollout_and_score(engine, step, attempt)
            if self.log is not None:
                self.log.write(step, rollouts, attempt)
            all_rollouts.append(rollouts)
            plans.append(plan)
            groups = sorted(set(rows.group_ids))
            if dynamic.enabled:
                keep = set(plan.keep.nonzero().flatten().tolist())
                groups = informative_groups(rows, keep, self.distinguishing)
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
        metrics = rollout_metrics(all_rollouts, plans)
        if self.online.environments:  # several: each one's own statistics too
            metrics |= environment_metrics(all_rollouts, self.online.environment_field)
        if dynamic.enabled:
            metrics["rollout/filtered_frac"] = 1 - groups_kept / max(1, groups_seen)
            metrics["rollout/rounds"] = float(len(all_rollouts))
        return kept, metrics
