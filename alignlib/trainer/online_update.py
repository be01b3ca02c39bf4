"""Online RL stages after the rollout: the rows as host tensors, old/ref log-probs, the
engine's behaviour log-probs on the trainer's scale, and the k optimizer mini-batches of whole
groups the loop's update takes."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from alignlib.device import HOST
from alignlib.estimator import Batch, UnifiedEstimator
from alignlib.estimator.aggregation import PairMean
from alignlib.trainer.online_rollout import TrainRows
from alignlib.trainer.packing import MicroBatching
from alignlib.trainer.step import HostRows
from alignlib.trainer.step_rewards import turn_states
from alignlib.trainer.update import MiniBatch

# Fields this loop can fill; an estimator that needs others is not an online RL method.
ONLINE_FIELDS = {
    "baseline_rewards",
    "reward_parts",
    "reward_weights",
    "old_logprobs",
    "old_log_sum_sq_probs",
    "ref_logprobs",
    "behaviour_logprobs",
    "entropy",
    "rewards",
    "group_ids",
    "roles",
    "values",  # a critic's, trained beside the policy (alignlib.trainer.critic)
}


@dataclass
class RowTensors:
    """Right-padded training rows."""

    input_ids: Tensor
    attention: Tensor
    mask: Tensor
    """[R, W] 1 on completion tokens the policy sampled or a demonstration holds, 0 on prompt,
    padding and environment tokens (position t scores token t, as token_logprobs returns)."""
    roles: Tensor
    group_ids: Tensor
    rewards: Tensor
    behaviour: Tensor
    """[R, W] the engine's log-prob of each sampled completion token, aligned with ``mask``
    (as the engine returned it: the processed distribution); 0 on demonstration rows."""
    step_rewards: Tensor | None = None
    """[R, W] the weighted step rewards (an environment's turn rewards, a PRM's step scores),
    each on its step's last token (already part of ``rewards``); None when no row has any."""
    step_ends: Tensor | None = None
    """[R, W] 1 on the tokens a step reward sits on (one of 0 included); with step_rewards."""
    reward_parts: Tensor | None = None
    """[R, K] each reward's own value per row (NaN on a demonstration); None without rewards."""
    reward_weights: Tensor | None = None
    """[K] each reward's weight."""
    baseline_rewards: Tensor | None = None
    """[R] the reward of each row's prompt's greedy completion (ReMax); None: none sampled."""
    step_states: Tensor | None = None
    """[R, W] int64: on each model turn's last sampled token, the id of its state (the tokens
    before the turn: :func:`~alignlib.trainer.step_rewards.turn_states`), −1 elsewhere."""

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]

    @property
    def host(self) -> HostRows:
        return HostRows(self.input_ids, self.attention, self.mask)


@dataclass(frozen=True)
class RolloutPasses:
    """[R, W] tensors on the policy's device, one row per training row; None: not needed."""

    old: Tensor | None = None
    """π_old's log-probs; None: on-policy, and the update's own forward gives them."""
    entropy: Tensor | None = None
    """The entropy of the pass that gave ``current`` (a mask that selects tokens by it)."""
    ref: Tensor | None = None
    """π_ref's log-probs, when the estimator reads them."""
    engine: Tensor | None = None
    """The engine's log-probs on the trainer's scale (:func:`engine_logprobs`)."""
    old_collision: Tensor | None = None
    """log Σ_v π_old(v)² at each position (the optimal token baseline's weights)."""
    current: Tensor | None = None
    """The present policy's log-probs, for a mask's ``prepare``; None: ``old``'s."""

    def take(self, indices: Tensor) -> RolloutPasses:
        """The rows ``indices`` (on the passes' device) of every pass."""
        parts = {f.name: getattr(self, f.name) for f in fields(self)}
        return RolloutPasses(**{k: None if v is None else v[indices] for k, v in parts.items()})

    @property
    def present(self) -> Tensor | None:
        return self.current if self.current is not None else self.old


def collate_rows(rows: TrainRows, pad_id: int) -> RowTensors:
    """Right-padded host tensors of the rows (the kernel moves each micro-batch once)."""
    width = max(len(s) for s in rows.sequences)
    count = len(rows)
    input_ids = torch.full((count, width), pad_id, dtype=torch.long, device=HOST)
    attention = torch.zeros(count, width, dtype=torch.long, device=HOST)
    mask = torch.zeros(count, width, device=HOST)
    behaviour = torch.zeros(count, width, device=HOST)
    steps = torch.zeros(count, width, device=HOST)
    ends = torch.zeros(count, width, device=HOST)
    states = torch.full((count, width), -1, dtype=torch.long, device=HOST)
    for r, (seq, start) in enumerate(zip(rows.sequences, rows.starts, strict=True)):
        input_ids[r, : len(seq)] = torch.tensor(seq, device=HOST)
        attention[r, : len(seq)] = 1
        loss_mask = rows.loss_masks[r] if rows.loss_masks else None
        if loss_mask is None:
            mask[r, start : len(seq)] = 1
        else:  # 0 where an environment inserted the tokens: they are never trained on
            assert len(loss_mask) == len(seq) - start, "a loss mask must match the tokens"
            mask[r, start : len(seq)] = torch.tensor(loss_mask, dtype=mask.dtype, device=HOST)
        logprobs = rows.behaviour[r] if rows.behaviour else None
        if logprobs is not None:  # one per completion token: position t scores token t
            assert len(logprobs) == len(seq) - start, "engine log-probs must match the tokens"
            behaviour[r, start : len(seq)] = torch.tensor(logprobs, device=HOST)
        for position, reward in (rows.step_rewards[r] or {}).items():
            assert 0 <= position < len(seq) - start, "a step reward must sit on a completion token"
            steps[r, start + position] = reward
            ends[r, start + position] = 1.0
        for position, state in turn_states(seq[:start], seq[start:], loss_mask).items():
            states[r, start + position] = state
    has_steps = any(t is not None for t in rows.step_rewards)
    parts = weights = None
    if rows.reward_weights:
        nan = [float("nan")] * len(rows.reward_weights)
        parts = torch.tensor([p if p is not None else nan for p in rows.reward_parts], device=HOST)
        weights = torch.tensor(rows.reward_weights, device=HOST)
    baselines = None
    if rows.baselines and all(b is not None for b in rows.baselines):
        baselines = torch.tensor(rows.baselines, dtype=torch.float32, device=HOST)
    return RowTensors(
        input_ids,
        attention,
        mask,
        torch.tensor(rows.roles, device=HOST),
        torch.tensor(rows.group_ids, device=HOST),
        torch.tensor(rows.rewards, dtype=torch.float32, device=HOST),
        behaviour,
        steps if has_steps else None,
        ends if has_steps else None,
        parts,
        weights,
        baselines,
        states,
    )


def check_online_estimator(estimator: UnifiedEstimator, name: str | None) -> None:
    """One clear line when the algorithm is no online RL method: it reads no rewards (SFT, the
    DPO family) or needs batch fields online rollouts do not make (pairs, π_t)."""
    needs = estimator.requirements()
    missing = {k: v for k, v in needs.items() if k not in ONLINE_FIELDS}
    if missing or not learns_from_rollouts(estimator):
        why = (
            "batch.{} ({})".format(*next(iter(missing.items())))
            if missing
            else "no rewards: it trains on given completions"
        )
        raise ValueError(
            f"algorithm {name or '(components)'} is not an online RL method (it needs {why}); "
            f"with a rollout section use one of: {', '.join(online_presets())}"
        )
    for term in estimator.terms:
        if isinstance(getattr(term, "aggregation", None), PairMean):
            raise ValueError(
                "algorithm.components.aggregation: pair-mean needs preference pairs; online rows "
                "are not paired (use token-mean, seq-mean-token-mean or seq-mean-token-sum-norm)"
            )


def learns_from_rollouts(estimator: UnifiedEstimator) -> bool:
    """Its advantage is a function of sampled rollouts: their rewards, or a teacher's view of
    them (on-policy distillation)."""
    return "rewards" in estimator.requirements() or estimator.distills()


def online_presets() -> list[str]:
    """The registered presets an online run can train (they learn from rollouts and read
    nothing else rollouts cannot make): listed from the registry, so a new preset needs no edit
    here."""
    import alignlib.algorithms as algorithms

    names = []
    for name in algorithms.available():
        estimator = algorithms.get(name)
        if learns_from_rollouts(estimator) and set(estimator.requirements()) <= ONLINE_FIELDS:
            names.append(name)
    return names


def minibatch_rows(group_ids: Tensor, count: int) -> list[Tensor]:
    """Row indices of ``count`` mini-batches made of whole groups (group advantages need them)."""
    groups = torch.unique(group_ids, sorted=True)
    parts = groups.tensor_split(min(count, groups.numel()))
    return [torch.isin(group_ids, part).nonzero().flatten() for part in parts if part.numel()]


def online_minibatch(
    rows: RowTensors,
    indices: Tensor,
    passes: RolloutPasses,
    micro_batch_size: int | MicroBatching,
    precomputed: dict[str, Tensor] | None = None,
) -> MiniBatch:
    """The rows ``indices`` as one optimizer mini-batch, with ``passes`` (these rows' part of
    the no-grad passes: :meth:`RolloutPasses.take`); ``passes.old`` None means on-policy (the
    update's own forward gives π_old). ``precomputed``: the terms' advantages over every row of
    the rollout batch (``UnifiedEstimator.precompute``), of which these rows take their own.
    Micro-batches hold ``micro_batch_size`` rows, or as many as a :class:`MicroBatching`'s token
    budget holds."""
    subset = HostRows(rows.input_ids[indices], rows.attention[indices], rows.mask[indices])
    batch = rollout_fields(rows, indices, passes)
    if precomputed:  # the advantages over the whole rollout batch, these rows' part
        on_device = indices.to(next(iter(precomputed.values())).device)
        batch = batch.replace(precomputed={k: v[on_device] for k, v in precomputed.items()})
    units = list(torch.arange(indices.numel(), device=HOST).split(1))
    micro = MicroBatching.of(micro_batch_size).split(units, subset.attention.sum(-1))
    return MiniBatch(subset, batch, micro, on_policy=passes.old is None, with_entropy=True)


def rollout_fields(rows: RowTensors, indices: Tensor, passes: RolloutPasses) -> Batch:
    """The estimator's fields of the rows ``indices`` (``passes``: theirs); zeros stand in
    for the log-probs the update's forward fills."""
    placeholder = torch.zeros(indices.numel(), rows.input_ids.shape[1], device=HOST)

    def some(tensor: Tensor | None) -> Tensor | None:
        return None if tensor is None else tensor[indices]

    present, old, entropy = passes.present, passes.old, passes.entropy
    return Batch(
        logprobs=present if present is not None else placeholder,
        mask=rows.mask[indices],
        old_logprobs=old if old is not None else placeholder,
        ref_logprobs=passes.ref,
        behaviour_logprobs=passes.engine,
        old_log_sum_sq_probs=passes.old_collision,
        entropy=entropy if entropy is not None else placeholder,
        rewards=rows.rewards[indices],
        baseline_rewards=some(rows.baseline_rewards),
        step_rewards=some(rows.step_rewards),
        step_ends=some(rows.step_ends),
        step_states=some(rows.step_states),
        reward_parts=some(rows.reward_parts),
        reward_weights=None
        if rows.reward_weights is None
        else rows.reward_weights.expand(indices.numel(), -1),
        group_ids=rows.group_ids[indices],
        roles=rows.roles[indices],
    )


def rollout_advantages(
    estimator: UnifiedEstimator,
    rows: RowTensors,
    device: torch.device,
    passes: RolloutPasses,
    values: Tensor | None = None,
) -> dict[str, Tensor]:
    """The terms' advantages over every row of the rollout batch, on ``device``
    (``UnifiedEstimator.precompute``), for :func:`online_minibatch`'s ``precomputed``;
    ``values``: a critic's V_old of every row (GAE reads them)."""
    every = torch.arange(rows.num_rows, device=HOST)
    batch = rollout_fields(rows, every, passes)
    if values is not None:
        batch = batch.replace(values=values)
    return estimator.precompute(batch.to(device))
