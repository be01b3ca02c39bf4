"""Where a completion's step rewards sit among its tokens.

Two sources give a reward to a step of a completion rather than to the whole: a multi-turn
environment whose `step` returns (observation, reward) (on the turn's last sampled token, as
the episode recorded it), and a process reward model with `reduce: steps` (each step's score,
found by its end in the completion's text). Both are weighted as their reward is in
`online.rewards`, and are summed where they meet. GAE credits each to the tokens before it;
process-supervised GRPO normalizes them within the group.
"""

from __future__ import annotations

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
