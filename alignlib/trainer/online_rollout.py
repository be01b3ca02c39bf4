"""Online RL stages before the update: prompts → rollouts → rewards → routing → filtering.

Each stage is a plain function; ``run_online`` calls them top to bottom. Rows are built from
token ids (never re-tokenized text), so the trained tokens are exactly the sampled ones.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from alignlib.config.online import OnlineConfig, RolloutConfig
from alignlib.estimator import Role, RowPlan
from alignlib.rollout.base import Generation, SamplingParams
from alignlib.trainer.online_rewards import RewardModel
from alignlib.trainer.step_rewards import StepRewards, place_steps


@dataclass
class Rollouts:
    """P prompts × n completions, scored."""

    rows: list[dict[str, Any]]
    """The data rows of the P prompts."""
    prompt_ids: list[list[int]]
    generations: list[list[Generation]]
    rewards: Tensor
    """[P, n] total reward of each completion."""
    correct: Tensor
    """[P, n] bool: correct per the math grader (rows with `answer`), else reward > threshold."""
    seconds: float = 0.0
    """Wall time of generation alone."""
    parts: dict[str, Tensor] = field(default_factory=dict)
    """[P, n] each reward's own value (before its weight), by its label: `rollout/reward/...`."""
    step_rewards: list[list[StepRewards | None]] = field(default_factory=list)
    """[P][n] the weighted rewards each completion's steps carry, by token (part of
    ``rewards``: an environment's turn rewards, a PRM's step scores); None, or no list at
    all: none."""
    weights: dict[str, float] = field(default_factory=dict)
    """Each reward's weight in ``rewards``, by the labels of ``parts``."""
    baselines: Tensor | None = None
    """[P] the reward of each prompt's greedy completion (ReMax's baseline), when the
    advantage reads one; None otherwise."""

    def parts_of(self, p: int, s: int) -> list[float] | None:
        """Completion ``s`` of prompt ``p``: each reward's own value, in ``weights``' order."""
        return [float(self.parts[label][p, s]) for label in self.weights] or None

    @property
    def num_tokens(self) -> int:
        """Tokens the policy sampled (not those an environment inserted)."""
        return sum(
            len(g.token_ids) if g.loss_mask is None else sum(g.loss_mask)
            for gens in self.generations
            for g in gens
        )


@dataclass
class TrainRows:
    """The rows one step trains on: prompt + completion token ids, with roles and groups."""

    sequences: list[list[int]] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    """Position of each row's first completion token."""
    roles: list[int] = field(default_factory=list)
    group_ids: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    behaviour: list[list[float] | None] = field(default_factory=list)
    """The engine's log-prob of each completion token (``Generation.logprobs``: the processed
    distribution it sampled from); None for rows the engine did not sample (demonstrations)."""
    loss_masks: list[list[int] | None] = field(default_factory=list)
    """Per completion token, 1 to train on it and 0 for tokens an environment inserted
    (``Generation.loss_mask``); None: every completion token trains."""
    step_rewards: list[StepRewards | None] = field(default_factory=list)
    """The weighted rewards on the row's steps, by completion token (part of the row's reward;
    ``Rollouts.step_rewards``); None: none."""
    reward_parts: list[list[float] | None] = field(default_factory=list)
    """Each reward's own value for the row (``Rollouts.parts``, in ``reward_weights``' order);
    None for a demonstration."""
    reward_weights: list[float] = field(default_factory=list)
    """Each reward's weight (the same for every row)."""
    baselines: list[float | None] = field(default_factory=list)
    """The reward of the row's prompt's greedy completion (``Rollouts.baselines``); None:
    none was sampled."""

    def add(
        self,
        prompt: list[int],
        completion: list[int],
        role: Role,
        group: int,
        reward: float,
        logprobs: list[float] | None = None,
        loss_mask: list[int] | None = None,
        step_rewards: StepRewards | None = None,
        parts: list[float] | None = None,
        baseline: float | None = None,
    ) -> None:
        self.sequences.append(list(prompt) + list(completion))
        self.starts.append(len(prompt))
        self.roles.append(int(role))
        self.group_ids.append(group)
        self.rewards.append(float(reward))
        self.behaviour.append(None if logprobs is None else list(logprobs))
        self.loss_masks.append(None if loss_mask is None else list(loss_mask))
        self.step_rewards.append(None if step_rewards is None else dict(step_rewards))
        self.reward_parts.append(parts)
        self.baselines.append(baseline)

    def extend(self, other: TrainRows, group_offset: int) -> None:
        self.sequences += other.sequences
        self.starts += other.starts
        self.roles += other.roles
        self.group_ids += [g + group_offset for g in other.group_ids]
        self.rewards += other.rewards
        self.behaviour += other.behaviour
        self.loss_masks += other.loss_masks
        self.step_rewards += other.step_rewards
        self.reward_parts += other.reward_parts
        self.baselines += other.baselines
        self.reward_weights = self.reward_weights or other.reward_weights

    def __len__(self) -> int:
        return len(self.sequences)


# ------------------------------------------------------------------------------------- rollout
def sampling_params(config: RolloutConfig, seed: int) -> SamplingParams:
    return SamplingParams(
        n=config.n,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        min_p=config.min_p,
        max_new_tokens=config.max_new_tokens,
        seed=seed,
    )


def score_rollouts(
    rewards: RewardModel,
    rows: list[dict[str, Any]],
    prompt_ids: list[list[int]],
    generations: list[list[Generation]],
    seconds: float,
    tokenizer: Any,
) -> Rollouts:
    """The completions' rewards, and where their step rewards sit (``tokenizer``: the
    policy's, to find a PRM step's last token)."""
    flat = [(p, g) for p, gens in enumerate(generations) for g in gens]
    scores = rewards.score(
        [g.text for _, g in flat],
        [len(g.token_ids) for _, g in flat],
        [rows[p] for p, _ in flat],
        [list(g.token_ids) for _, g in flat],
        [g.environment_reward for _, g in flat],
        [g.environment for _, g in flat],
    )
    shape = (len(generations), len(generations[0]) if generations else 0)
    placed = iter(scores.steps)
    weight = rewards.environment_weight
    steps = [
        [place_steps(g, weight, next(placed), tokenizer) for g in gens] for gens in generations
    ]
    parts = {label: values.view(shape) for label, values in scores.parts.items()}
    total, correct = scores.total.view(shape), scores.correct.view(shape)
    weights = dict(zip(rewards.labels, (spec.weight for spec in rewards.specs), strict=True))
    return Rollouts(rows, prompt_ids, generations, total, correct, seconds, parts, steps, weights)


# ------------------------------------------------------------------------------------- routing
def demonstration_ids(
    tokenizer: Any, row: dict[str, Any], config: OnlineConfig, where: str
) -> list[int]:
    """The row's demonstration as completion tokens, EOS appended (the policy learns to stop)."""
    text = row.get(config.demonstration_field)
    if not isinstance(text, str) or not text:
        raise ValueError(
            f"{where}: online.routing needs a demonstration in field "
            f"'{config.demonstration_field}' of every row (set online.demonstration_field); "
            f"this row has {sorted(row)}"
        )
    ids = tokenizer.encode(text, add_special_tokens=False)[: config.max_demonstration_length - 1]
    return [*ids, tokenizer.eos_token_id]


def build_rows(
    rollouts: Rollouts,
    plan: RowPlan,
    demos: Callable[[dict[str, Any]], list[int]],
    drop_truncated: bool = False,
) -> TrainRows:
    """The rows the preset's router planned, in its order: rollout ``s`` of prompt ``p`` (its
    prompt as sampled, with what an environment's reset appended; its sampled token ids and
    engine log-probs), or the prompt's demonstration when ``s`` is −1. ``drop_truncated``
    (DAPO's overlong filtering): a rollout cut at the length limit keeps its row and reward
    (its group's baseline still sees it) but trains on none of its tokens."""
    out = TrainRows(reward_weights=list(rollouts.weights.values()))
    rows = zip(plan.prompt_index.tolist(), plan.sample_index.tolist(), strict=True)
    baselines = None if rollouts.baselines is None else rollouts.baselines.tolist()
    for (p, s), role, reward in zip(rows, plan.roles.tolist(), plan.rewards.tolist(), strict=True):
        prompt = rollouts.prompt_ids[p]
        baseline = None if baselines is None else baselines[p]
        if s < 0:
            out.add(prompt, demos(rollouts.rows[p]), Role(role), p, reward, baseline=baseline)
        else:
            gen = rollouts.generations[p][s]
            steps = rollouts.step_rewards[p][s] if rollouts.step_rewards else None
            own = gen.prompt_ids or prompt
            loss_mask = gen.loss_mask
            if drop_truncated and gen.finish_reason == "length":
                loss_mask = [0] * len(gen.token_ids)
            parts = rollouts.parts_of(p, s)
            out.add(
                own,
                gen.token_ids,
                Role(role),
                p,
                reward,
                gen.logprobs,
                loss_mask,
                steps,
                parts,
                baseline,
            )
    return out


# ---------------------------------------------------------------------------- dynamic sampling
def informative_groups(
    rows: TrainRows, always: Collection[int] = (), distinguishing: Collection[str] = ()
) -> list[int]:
    """Group ids that can carry gradient: those the router keeps whatever their rewards
    (``RowPlan.keep``: HPT's SFT rows), or rewards that are not all equal, nor the fields in
    ``distinguishing`` for an advantage that reads them (``step_rewards``: where step rewards
    sit; ``reward_parts``: each reward's own value, as GDPO normalizes them one by one), or
    for ``baseline_rewards`` (ReMax) rewards that are not all equal to the greedy baseline.

    A group whose policy-gradient rows all share one reward has zero advantage under every
    group baseline, so DAPO's dynamic sampling drops it and samples more prompts instead.
    """
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(rows.group_ids):
        by_group.setdefault(g, []).append(i)

    def profile(i: int) -> object:
        placed = ()
        if "step_rewards" in distinguishing:
            placed = tuple(sorted((rows.step_rewards[i] or {}).items()))
        parts = ()
        if "reward_parts" in distinguishing:  # NaN (no opinion) as None: NaN != NaN
            parts = tuple(None if v != v else v for v in rows.reward_parts[i] or ())
        return rows.rewards[i], placed, parts

    reads_baseline = "baseline_rewards" in distinguishing

    def off_baseline(i: int) -> bool:  # ReMax: Â = R − R_greedy, nonzero off the baseline
        return reads_baseline and rows.baselines[i] != rows.rewards[i]

    return [
        g
        for g, members in by_group.items()
        if g in always
        or len({profile(i) for i in members}) > 1
        or any(off_baseline(i) for i in members)
    ]


def select_groups(rows: TrainRows, groups: list[int]) -> TrainRows:
    """The rows of ``groups``, renumbered 0..len(groups)−1 in that order."""
    out = TrainRows(reward_weights=rows.reward_weights)
    for new, g in enumerate(groups):
        for i, gid in enumerate(rows.group_ids):
            if gid == g:
                out.add(
                    rows.sequences[i][: rows.starts[i]],
                    rows.sequences[i][rows.starts[i] :],
                    Role(rows.roles[i]),
                    new,
                    rows.rewards[i],
                    rows.behaviour[i],
                    rows.loss_masks[i],
                    rows.step_rewards[i],
                    rows.reward_parts[i],
                    rows.baselines[i],
                )
    return out
