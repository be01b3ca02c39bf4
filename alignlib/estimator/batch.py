"""The estimator's input: per-token log-probs and masks, per-row rewards, groups and roles."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import IntEnum

import torch
from torch import Tensor


class Role(IntEnum):
    """What a row of the batch is; methods select the rows they train on by role."""

    SAMPLE = 0
    """A completion sampled from the policy (online RL rows)."""
    CHOSEN = 1
    """The preferred completion of a preference pair."""
    REJECTED = 2
    """The dispreferred completion of a preference pair."""
    DEMO = 3
    """A demonstration: TPO's gold response, HPT's SFT row, LUFFY's off-policy trace."""
    KL = 4
    """A mismatched (prompt, completion) pair: KTO estimates KL(π‖π_ref) on these rows; no term
    trains on them."""


class BatchError(ValueError):
    """A batch that cannot be used as given (the message names the field and what was expected)."""


# Per-token fields share the shape of ``logprobs``; per-row fields have one entry per row.
TOKEN_FIELDS = (
    "logprobs",
    "mask",
    "prompt_mask",
    "old_logprobs",
    "ref_logprobs",
    "prev_logprobs",
    "entropy",
    "behaviour_logprobs",
    "values",
    "returns",
    "step_rewards",
    "step_ends",
    "step_states",
    "log_sum_sq_probs",
    "old_log_sum_sq_probs",
)
ROW_FIELDS = ("rewards", "baseline_rewards", "group_ids", "roles", "pair_ids", "trace", "margins")
# Per-row fields with a second axis of their own (one column per reward function).
ROW_MATRIX_FIELDS = ("reward_parts", "reward_weights")


@dataclass
class Batch:
    """One optimizer mini-batch (or a micro-batch of one) of R rows padded to width T.

    Only ``logprobs`` and ``mask`` are always needed; each component states which other fields
    it reads, and the estimator names a missing one in its error.
    """

    logprobs: Tensor
    """[R, T] log π_θ of each completion token, with gradient."""
    mask: Tensor
    """[R, T] 1 on completion tokens, 0 on prompt and padding."""
    prompt_mask: Tensor | None = None
    """[R, T] 1 on the prompt tokens that are scored (every one after the first), read only by
    an NLL over whole sequences (ORPO's released code trains the prompt too)."""
    old_logprobs: Tensor | None = None
    """[R, T] log-probs under π_old, the policy that sampled the rows, as the trainer computes
    them (the PPO/GRPO importance ratio π/π_old; the engine's own numbers are
    ``behaviour_logprobs``)."""
    ref_logprobs: Tensor | None = None
    """[R, T] log-probs under the frozen reference policy (DPO family, KL penalty)."""
    prev_logprobs: Tensor | None = None
    """[R, T] log-probs under the previous iterate π_t (INPO)."""
    entropy: Tensor | None = None
    """[R, T] policy entropy per position, with gradient if an entropy bonus is used."""
    behaviour_logprobs: Tensor | None = None
    """[R, T] log-probs the rollout engine recorded while sampling SAMPLE rows (vLLM or the
    transformers engine), read only by a rollout correction (π_old/π_behaviour per token). They
    must describe the same distribution as ``old_logprobs`` (tempered, full vocabulary): an
    engine's ``processed`` log-probs of a top-k/top-p truncated distribution are ℓ − log S_t and
    need log S_t added first (:func:`~alignlib.estimator.rollout_correction.kept_log_mass`).
    Values on padding and on non-SAMPLE rows are ignored."""
    values: Tensor | None = None
    """[R, T] a critic's value V(s_t) of each completion token, from the no-grad pass over the
    rollout (V_old; read by GAE and by the critic's clipped value loss)."""
    returns: Tensor | None = None
    """[R, T] the critic's regression targets (GAE's A + V), read by its value loss."""
    log_sum_sq_probs: Tensor | None = None
    """[R, T] log Σ_v π(v | x, y_<t)² of the present policy at each completion token (its
    collision probability), no gradient; read by WPO's weights."""
    old_log_sum_sq_probs: Tensor | None = None
    """[R, T] log Σ_v π_old(v | x, y_<t)² at each completion token, from the no-grad π_old
    pass (tempered like π_old); read by the optimal token baseline's weights."""
    step_rewards: Tensor | None = None
    """[R, T] the part of each row's reward given step by step, each on its step's last token,
    0 elsewhere (``rewards`` includes it): a multi-turn environment's turn rewards, a process
    reward model's step scores. Read by GAE, which credits each to the tokens before it, and by
    process-supervised GRPO. None: all of the reward at the end."""
    step_ends: Tensor | None = None
    """[R, T] 1 on the last token of each step that carries a step reward (one of 0 included),
    0 elsewhere; given with ``step_rewards``."""
    step_states: Tensor | None = None
    """[R, T] int: on each model turn's last sampled token the id of the state it acted from
    (the observation before it), −1 elsewhere; read by GiGPO's anchor-state groups."""
    rewards: Tensor | None = None
    """[R] scalar reward of each row (online RL; an episode's turn rewards included)."""
    baseline_rewards: Tensor | None = None
    """[R] the reward of the greedy completion of the row's prompt, scored like the row
    (ReMax's baseline; the same on every row of a group)."""
    group_ids: Tensor | None = None
    """[R] integer id of the prompt a row answers; rows of one prompt form a group."""
    roles: Tensor | None = None
    """[R] integer :class:`Role` of each row; ``None`` means every row is a ``SAMPLE``."""
    pair_ids: Tensor | None = None
    """[R] integer id linking the chosen, rejected (and gold) rows of one preference pair."""
    trace: Tensor | None = None
    """[R] bool, BVPO: True when the response carries a reasoning trace, False for empty-trace."""
    margins: Tensor | None = None
    """[R] the target margin m of each row's pair (the data's `margin` column, as TRL's
    RewardTrainer reads it; read by the reward model's weights), on both rows of the pair."""
    reward_parts: Tensor | None = None
    """[R, K] each of the K reward functions' own value for the row, before its weight (NaN:
    the function gave no opinion), read by GDPO, which normalizes each one separately."""
    reward_weights: Tensor | None = None
    """[R, K] the weight of each reward function (the same on every row): ``rewards`` is the
    weighted sum of ``reward_parts``."""
    advantages: Tensor | None = None
    """[R] or [R, T] advantages computed elsewhere (read by the ``given`` advantage)."""
    precomputed: dict[str, Tensor] = field(default_factory=dict)
    """Per-row tensors the estimator computed over a larger batch this one was taken from: the
    terms' advantages over a whole rollout batch (``UnifiedEstimator.precompute``), which
    ``prepare`` then uses instead of computing them over this batch alone."""
    prepared: dict[str, Tensor] = field(default_factory=dict)
    """Per-row tensors the estimator computed once over the whole mini-batch (see ``prepare``)."""
    prepared_metrics: dict[str, Tensor] = field(default_factory=dict)
    """Mini-batch-level statistics computed by ``prepare`` (covariance, filtered fraction)."""
    was_prepared: bool = False
    """Set by ``prepare`` (its dicts may be empty for an estimator with nothing to prepare)."""
    unprepared_part: bool = False
    """A micro-batch ``split`` off a mini-batch that was never prepared: its normalizers would
    be its own, not the mini-batch's, so the estimator refuses it."""

    def __post_init__(self) -> None:
        if self.logprobs.dim() != 2:
            raise BatchError(
                f"batch.logprobs must be [rows, tokens], got shape {tuple(self.logprobs.shape)}"
            )
        shape = self.logprobs.shape
        for name in TOKEN_FIELDS[1:]:
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise BatchError(
                    f"batch.{name} has shape {tuple(value.shape)}, expected {tuple(shape)} "
                    "(the shape of batch.logprobs)"
                )
        for name in ROW_FIELDS:
            value = getattr(self, name)
            if value is not None and value.shape != shape[:1]:
                raise BatchError(
                    f"batch.{name} has shape {tuple(value.shape)}, expected ({shape[0]},): "
                    "one entry per row"
                )
        for name in ROW_MATRIX_FIELDS:
            value = getattr(self, name)
            if value is not None and (value.dim() != 2 or value.shape[0] != shape[0]):
                raise BatchError(
                    f"batch.{name} has shape {tuple(value.shape)}, expected ({shape[0]}, K): "
                    "one row of K values per row"
                )
        if self.advantages is not None and self.advantages.shape not in (shape, shape[:1]):
            raise BatchError(
                f"batch.advantages has shape {tuple(self.advantages.shape)}, expected "
                f"({shape[0]},) or {tuple(shape)}"
            )
        # One dtype for all arithmetic: a bool/int mask becomes the log-prob dtype.
        self.mask = self.mask.to(self.logprobs.dtype)
        if self.prompt_mask is not None:
            self.prompt_mask = self.prompt_mask.to(self.logprobs.dtype)

    @property
    def num_rows(self) -> int:
        return self.logprobs.shape[0]

    @property
    def width(self) -> int:
        return self.logprobs.shape[1]

    @property
    def is_prepared(self) -> bool:
        return self.was_prepared or bool(self.prepared) or bool(self.prepared_metrics)

    def role_codes(self) -> Tensor:
        """[R] role of each row (all ``SAMPLE`` when roles were not given)."""
        if self.roles is None:
            return torch.full((self.num_rows,), int(Role.SAMPLE), device=self.logprobs.device)
        return self.roles

    def replace(self, **changes: object) -> Batch:
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor (prepared ones included) on ``device``."""
        changes: dict[str, object] = {}
        for name in (*TOKEN_FIELDS, *ROW_FIELDS, *ROW_MATRIX_FIELDS, "advantages"):
            value = getattr(self, name)
            if value is not None:
                changes[name] = value.to(device, non_blocking=True)
        changes["precomputed"] = {k: v.to(device) for k, v in self.precomputed.items()}
        changes["prepared"] = {k: v.to(device) for k, v in self.prepared.items()}
        changes["prepared_metrics"] = {k: v.to(device) for k, v in self.prepared_metrics.items()}
        return self.replace(**changes)

    def select(self, rows: Tensor) -> Batch:
        """The sub-batch of the given row indices; prepared per-row tensors are sliced with it."""
        changes: dict[str, object] = {}
        for name in (*TOKEN_FIELDS, *ROW_FIELDS, *ROW_MATRIX_FIELDS, "advantages"):
            value = getattr(self, name)
            if value is not None:
                changes[name] = value[rows]
        changes["precomputed"] = {key: value[rows] for key, value in self.precomputed.items()}
        changes["prepared"] = {key: value[rows] for key, value in self.prepared.items()}
        return self.replace(**changes)

    def narrow(self, width: int) -> Batch:
        """Keep the first ``width`` positions (right-padded rows whose tokens all fit)."""
        if width == self.width:
            return self
        changes: dict[str, object] = {}
        for name in TOKEN_FIELDS:
            value = getattr(self, name)
            if value is not None:
                changes[name] = value[:, :width]
        if self.advantages is not None and self.advantages.dim() == 2:
            changes["advantages"] = self.advantages[:, :width]
        for name in ("precomputed", "prepared"):
            changes[name] = {
                key: value[:, :width] if _spans(value, self.width) else value
                for key, value in getattr(self, name).items()
            }
        return self.replace(**changes)

    def split(self, num_micro_batches: int) -> list[Batch]:
        """Split into micro-batches of whole pairs (rows sharing a pair id stay together)."""
        if num_micro_batches < 1:
            raise BatchError(f"num_micro_batches must be >= 1, got {num_micro_batches}")
        device = self.logprobs.device
        if self.pair_ids is None:
            units = [torch.tensor([i], device=device) for i in range(self.num_rows)]
        else:
            _, first = _first_occurrence(self.pair_ids)
            order = self.pair_ids[first.sort().values]
            units = [(self.pair_ids == pid).nonzero().flatten() for pid in order]
        if num_micro_batches > len(units):
            raise BatchError(
                f"cannot split {len(units)} rows/pairs into {num_micro_batches} micro-batches"
            )
        chunks = torch.arange(len(units), device="cpu").tensor_split(num_micro_batches)
        parts = [self.select(torch.cat([units[i] for i in chunk.tolist()])) for chunk in chunks]
        if num_micro_batches > 1 and not self.is_prepared:
            parts = [part.replace(unprepared_part=True) for part in parts]
        return parts

    @classmethod
    def from_pairs(
        cls,
        chosen_logprobs: Tensor,
        chosen_mask: Tensor,
        rejected_logprobs: Tensor,
        rejected_mask: Tensor,
        **per_half: tuple[Tensor, Tensor],
    ) -> Batch:
        """Lay B preference pairs out as 2B rows [chosen; rejected] with roles and pair ids.

        ``per_half`` holds other per-token fields as (chosen, rejected) tuples, e.g.
        ``ref_logprobs=(ref_chosen, ref_rejected)``.
        """
        num_pairs = chosen_logprobs.shape[0]
        device = chosen_logprobs.device
        roles = torch.cat(
            [
                torch.full((num_pairs,), int(Role.CHOSEN), device=device),
                torch.full((num_pairs,), int(Role.REJECTED), device=device),
            ]
        )
        pair_ids = torch.arange(num_pairs, device=device).repeat(2)
        extra = {name: torch.cat([c, r]) for name, (c, r) in per_half.items()}
        return cls(
            logprobs=torch.cat([chosen_logprobs, rejected_logprobs]),
            mask=torch.cat([chosen_mask, rejected_mask]),
            roles=roles,
            pair_ids=pair_ids,
            **extra,
        )


def _first_occurrence(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Unique ids and the index of each one's first row."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(ids.shape[0], device=ids.device)
    first = torch.full((unique.shape[0],), ids.shape[0], device=ids.device, dtype=torch.long)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return unique, first


@dataclass(frozen=True)
class Rows:
    """Which rows a term trains on: by role and, for BVPO, by trace flag (None = any)."""

    roles: frozenset[Role] | None = None
    """Roles to include; ``None`` includes every role."""
    trace: bool | None = None
    """BVPO: only trace rows (True), only empty-trace rows (False), or both (None)."""

    @classmethod
    def of(cls, *roles: Role, trace: bool | None = None) -> Rows:
        return cls(roles=frozenset(roles), trace=trace)

    def select(self, batch: Batch) -> Tensor:
        """[R] bool: rows this selector includes."""
        keep = torch.ones(batch.num_rows, dtype=torch.bool, device=batch.logprobs.device)
        if self.roles is not None:
            codes = batch.role_codes()
            keep = torch.zeros_like(keep)
            for role in self.roles:
                keep |= codes == int(role)
        if self.trace is not None:
            if batch.trace is None:
                raise BatchError(
                    "this method selects rows by batch.trace (BVPO trace / empty-trace pairs) "
                    "but the batch has no trace field"
                )
            keep &= batch.trace.bool() == self.trace
        return keep

    def describe(self) -> str:
        names = sorted(r.name.lower() for r in self.roles) if self.roles is not None else ["all"]
        return "+".join(names) if self.trace is None else f"{'+'.join(names)}, trace={self.trace}"


ALL_ROWS = Rows()


def _spans(value: Tensor, width: int) -> bool:
    """A per-token tensor of the batch's width (not a per-row one)."""
    return value.dim() == 2 and value.shape[1] == width
