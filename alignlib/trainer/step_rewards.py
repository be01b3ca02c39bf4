"""Where a completion's steps sit among its tokens, with their rewards and states.

Two sources give a reward to a step of a completion rather than to the whole: a multi-turn
environment whose `step` returns (observation, reward) (on the turn's last sampled token, as
the episode recorded it), and a process reward model with `reduce: steps` (each step's score,
found by its end in the completion's text). Both are weighted as their reward is in
`online.rewards`, and are summed where they meet. GAE credits each to the tokens before it;
process-supervised GRPO normalizes them within the group. Each model turn's end also carries
the id of the state it acted from (GiGPO's anchor states).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from typing import Any

from alignlib.rollout.base import Generation

StepRewards = dict[int, float]
"""{completion token index: the reward on that token, which ends a step}."""


def token_positions(
    tokenizer: Any, token_ids: Sequence[int], char_ends: Sequence[int]
) -> list[int]:
    """For each character offset into the completion's text (``decode(token_ids)``, special
    tokens skipped, as the engines write `Generation.text`), the index of the token that
    completes it: the first k with ``len(decode(token_ids[:k + 1])) >= end``."""
    lengths: dict[int, int] = {}

    def decoded(k: int) -> int:  # characters of the first k tokens
        if k not in lengths:
            lengths[k] = len(tokenizer.decode(token_ids[:k], skip_special_tokens=True))
        return lengths[k]

    out = []
    for end in char_ends:
        low, high = 1, len(token_ids)
        while low < high:  # the fewest tokens whose text reaches `end`
            middle = (low + high) // 2
            if decoded(middle) >= end:
                high = middle
            else:
                low = middle + 1
        out.append(max(0, low - 1))
    return out


def place_steps(
    generation: Generation,
    turn_weight: float,
    scored: Sequence[Sequence[tuple[int, float]]],
    tokenizer: Any,
) -> StepRewards | None:
    """The completion's step rewards: its environment's turn rewards (× ``turn_weight``, the
    `environment` reward's weight) and each PRM's weighted (character end, score) steps, the
    last of which sits on the completion's last token (an end-of-sequence token or a trailing
    separator closes the last step); None when it has neither."""
    if generation.turn_rewards is None and not scored:
        return None
    out: StepRewards = {}
    if generation.turn_rewards is not None:
        for end in generation.turn_ends or []:
            out[end] = out.get(end, 0.0) + turn_weight * generation.turn_rewards[end]
    for steps in scored:
        if not steps or not generation.token_ids:
            continue
        positions = token_positions(tokenizer, generation.token_ids, [end for end, _ in steps])
        positions[-1] = len(generation.token_ids) - 1
        for position, (_, value) in zip(positions, steps, strict=True):
            out[position] = out.get(position, 0.0) + value
    return out


def state_id(tokens: Sequence[int]) -> int:
    """A stable id (the same in every process and run) of a token sequence, in [0, 2⁴⁸)."""
    digest = hashlib.blake2b(array("q", tokens).tobytes(), digest_size=6).digest()
    return int.from_bytes(digest, "little")


def turn_states(
    prompt: Sequence[int], completion: Sequence[int], loss_mask: Sequence[int] | None
) -> dict[int, int]:
    """{completion token index: state id} on the last sampled token of each model turn (a run
    of 1s in ``loss_mask``; the whole completion when None): the id of what the turn acted from,
    the tokens an environment inserted just before it, or the prompt for the first turn (GiGPO's
    anchor states: equal observations, equal ids)."""
    mask = [1] * len(completion) if loss_mask is None else list(loss_mask)
    out: dict[int, int] = {}
    before, start = list(prompt), 0
    for index, sampled in enumerate(mask):
        if not sampled:
            continue
        if index > start:  # a turn opens after tokens the environment inserted
            before = list(completion[start:index])
        start = index + 1
        if index == len(mask) - 1 or not mask[index + 1]:  # the turn's last token
            out[index] = state_id(before)
    return out
