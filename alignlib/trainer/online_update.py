"""Online RL stages after the rollout: the rows as host tensors, old/ref log-probs, the
engine's behaviour log-probs on the trainer's scale, and the k optimizer mini-batches of whole
groups the loop's update takes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignlib.device import HOST
from alignlib.estimator import Batch, Role, UnifiedEstimator
from alignlib.estimator.aggregation import PairMean
from alignlib.trainer.head_hooks import kept_mass
from alignlib.trainer.online_rollout import TrainRows
from alignlib.trainer.packing import MicroBatching
from alignlib.trainer.step import Context, HostRows, LogprobKernel
from alignlib.trainer.update import MiniBatch

# Fields this loop can fill; an estimator that needs others is not an online RL method.
ONLINE_FIELDS = {
    "baseline_rewards",
    "reward_parts",
    "reward_weights",
    "old_logprobs",
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

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]

    @property
    def host(self) -> HostRows:
        return HostRows(self.input_ids, self.attention, self.mask)


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


def policy_logprobs(
    kernel: LogprobKernel,
    rows: RowTensors,
    indices: Tensor,
    micro_batch_size: int,
    context: Context | None = None,
) -> tuple[Tensor, Tensor]:
    """([len(indices), W] log-probs, entropy) of the given rows on the kernel's device, no
    gradient, eval mode. Old/ref/current log-probs are only read under ``rows.mask``."""
    subset = HostRows(rows.input_ids[indices], rows.attention[indices], rows.mask[indices])
    logprobs, entropy = kernel.all_rows(
        subset, micro_batch_size, with_entropy=True, context=context
    )
    assert entropy is not None
    return logprobs, entropy


def minibatch_rows(group_ids: Tensor, count: int) -> list[Tensor]:
    """Row indices of ``count`` mini-batches made of whole groups (group advantages need them)."""
    groups = torch.unique(group_ids, sorted=True)
    parts = groups.tensor_split(min(count, groups.numel()))
    return [torch.isin(group_ids, part).nonzero().flatten() for part in parts if part.numel()]


def online_minibatch(
    rows: RowTensors,
    indices: Tensor,
    old: Tensor | None,
    ref: Tensor | None,
    current: Tensor | None,
    micro_batch_size: int | MicroBatching,
    behaviour: Tensor | None = None,
    entropy: Tensor | None = None,
    precomputed: dict[str, Tensor] | None = None,
) -> MiniBatch:
    """The rows ``indices`` as one optimizer mini-batch. ``old`` / ``ref`` / ``current``
    ([len(indices), W], from no-grad passes) are the behaviour, reference and present
    log-probs (``entropy``: the present policy's, from the same pass, for a mask that selects
    tokens by it); ``old`` None means on-policy (the update's own forward gives them).
    ``behaviour`` ([len(indices), W]): the engine's log-probs on the trainer's scale
    (:func:`engine_logprobs`), read by a rollout correction. ``precomputed``: the terms'
    advantages over every row of the rollout batch (``UnifiedEstimator.precompute``), of which
    these rows take their own. Micro-batches hold
    ``micro_batch_size`` rows, or as many as a :class:`MicroBatching`'s token budget holds."""
    subset = HostRows(rows.input_ids[indices], rows.attention[indices], rows.mask[indices])
    fields = rollout_fields(rows, indices, old, ref, current, behaviour, entropy)
    if precomputed:  # the advantages over the whole rollout batch, these rows' part
        on_device = indices.to(next(iter(precomputed.values())).device)
        fields = fields.replace(precomputed={k: v[on_device] for k, v in precomputed.items()})
    units = list(torch.arange(indices.numel(), device=HOST).split(1))
    micro = MicroBatching.of(micro_batch_size).split(units, subset.attention.sum(-1))
    return MiniBatch(subset, fields, micro, on_policy=old is None, with_entropy=True)


def rollout_fields(
    rows: RowTensors,
    indices: Tensor,
    old: Tensor | None,
    ref: Tensor | None,
    current: Tensor | None,
    behaviour: Tensor | None = None,
    entropy: Tensor | None = None,
) -> Batch:
    """The estimator's fields of the rows ``indices`` (arguments as :func:`online_minibatch`
    takes them); zeros stand in for the log-probs the update's forward fills."""
    placeholder = torch.zeros(indices.numel(), rows.input_ids.shape[1], device=HOST)
    return Batch(
        logprobs=current if current is not None else placeholder,
        mask=rows.mask[indices],
        old_logprobs=old if old is not None else placeholder,
        ref_logprobs=ref,
        behaviour_logprobs=behaviour,
        entropy=entropy if entropy is not None else placeholder,
        rewards=rows.rewards[indices],
        baseline_rewards=None if rows.baseline_rewards is None else rows.baseline_rewards[indices],
        step_rewards=None if rows.step_rewards is None else rows.step_rewards[indices],
        step_ends=None if rows.step_ends is None else rows.step_ends[indices],
        reward_parts=None if rows.reward_parts is None else rows.reward_parts[indices],
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
    old: Tensor | None,
    ref: Tensor | None,
    behaviour: Tensor | None = None,
    entropy: Tensor | None = None,
    values: Tensor | None = None,
) -> dict[str, Tensor]:
    """The terms' advantages over every row of the rollout batch, on ``device``
    (``UnifiedEstimator.precompute``), for :func:`online_minibatch`'s ``precomputed``;
    ``values``: a critic's V_old of every row (GAE reads them)."""
    every = torch.arange(rows.num_rows, device=HOST)
    fields = rollout_fields(rows, every, old, ref, None, behaviour, entropy)
    if values is not None:
        fields = fields.replace(values=values)
    return estimator.precompute(fields.to(device))


def old_logprobs_and_kept_mass(
    kernel: LogprobKernel,
    rows: RowTensors,
    micro_batch_size: int,
    top_k: int,
    top_p: float,
    min_p: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """([R, W] old log-probs, their entropy, [R, W] log S_t) in one no-grad pass over every
    row: S_t is the tempered mass the engine's min-p/top-k/top-p kept at position t, read from
    the same logits."""
    reduce = kept_mass(kernel.temperature, top_k, top_p, min_p)
    out = kernel.every_row(rows.host, micro_batch_size, with_entropy=True, statistic=reduce)
    assert out.statistic is not None and out.entropy is not None
    return out.logprobs, out.entropy, out.statistic


def engine_logprobs(rows: RowTensors, kept_mass: Tensor | None, device: torch.device) -> Tensor:
    """[R, W] the engine's log-probs of the SAMPLE rows' tokens on the trainer's scale.

    Both engines return the processed log-prob ℓ − log S_t (tempered, then top-k/top-p,
    renormalized over the kept tokens); the trainer's π_old is the tempered full-vocabulary ℓ.
    Adding log S_t compares like with like; without truncation S_t = 1 (``kept_mass`` None)."""
    sample = (rows.roles == int(Role.SAMPLE)).unsqueeze(-1) * rows.mask
    behaviour = rows.behaviour.to(device)
    if kept_mass is not None:
        behaviour = behaviour + kept_mass
    return behaviour * sample.to(device)
