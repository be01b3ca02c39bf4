"""Sample K responses per prompt from the current policy, rank them with a preference oracle,
and keep (best, worst) as a preference pair. The preference iterations (`iterative:`) and
BVPO's pair building share it.

With a scalar oracle (a verifiable reward or a reward model), the best and worst of K are
exactly what INPO's knockout tournament returns under a Bradley–Terry preference model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignlib.data import Example
from alignlib.estimator import Role
from alignlib.rewards.learned import SEQUENCE_HEAD, check_model_folder
from alignlib.rollout.base import RolloutEngine, SamplingParams

Oracle = Callable[[Sequence[str], Sequence[str], Sequence[dict[str, Any]]], list[float]]
"""(prompts, completions, rows) → one score per completion; higher is preferred."""


def check_reward_model_folder(path: str) -> str:
    """``path`` if it is a sequence-classification model folder or Hub id (read from its
    config.json, before any weights load); otherwise a one-line ValueError naming
    ``iterative.oracle``."""
    return check_model_folder(path, "iterative.oracle", SEQUENCE_HEAD, prefix="reward_model:")


def resolve_oracle(spec: str, device: torch.device | None = None) -> Oracle:
    """A reward name / ``module:function`` (per completion), or ``reward_model:PATH`` (loaded
    onto ``device``: the run's device)."""
    if spec.startswith("reward_model:"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from alignlib.rewards import RewardModelScorer

        path = check_reward_model_folder(spec.removeprefix("reward_model:"))
        scorer = RewardModelScorer(
            AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).to(device),
            AutoTokenizer.from_pretrained(path),
        )
        return lambda prompts, completions, rows: scorer(list(prompts), list(completions))
    from alignlib.rewards import call_reward, resolve_reward
    from alignlib.rewards.forms import detect_form

    reward = resolve_reward(spec)
    form = detect_form(reward)
    if form != "alignlib":
        shape = "fn(completions, **columns) -> list" if form == "trl" else "compute_score(...)"
        raise ValueError(
            f"iterative.oracle: {spec} is a {'TRL' if form == 'trl' else 'verl'}-form reward "
            f"({shape}); the iterations call the oracle once per completion, "
            "fn(completion, **columns) -> float (TRL/verl batch forms are for online.rewards)"
        )

    def score(
        prompts: Sequence[str], completions: Sequence[str], rows: Sequence[dict]
    ) -> list[float]:
        # One line naming the oracle and the row when it raises or returns no finite number.
        return [
            call_reward(reward, spec, c, row, {}) for c, row in zip(completions, rows, strict=True)
        ]

    return score


@dataclass
class RankedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_score: float
    rejected_score: float
    row: dict[str, Any]


def sample_and_rank(
    engine: RolloutEngine,
    rows: Sequence[dict[str, Any]],
    oracle: Oracle,
    sampling: SamplingParams,
    response_prefix: list[int] | None = None,
) -> tuple[list[RankedPair], dict[str, float]]:
    """Best and worst of ``sampling.n`` responses per prompt; prompts whose best does not beat
    their worst give no pair. ``response_prefix`` forces the start of every response (BVPO's
    empty think block) and is kept in the pair's completions."""
    prefix = response_prefix or []
    prompt_ids = engine.encode_prompts([row["prompt"] for row in rows])  # type: ignore[attr-defined]
    generations = engine.generate([ids + prefix for ids in prompt_ids], sampling)
    pairs: list[RankedPair] = []
    scores_all: list[float] = []
    for row, ids, gens in zip(rows, prompt_ids, generations, strict=True):
        texts = [g.text for g in gens]
        scores = oracle([str(row["prompt"])] * len(gens), texts, [row] * len(gens))
        scores_all.extend(scores)
        best = max(range(len(gens)), key=lambda i: scores[i])
        worst = min(range(len(gens)), key=lambda i: scores[i])
        if scores[best] > scores[worst]:
            pairs.append(
                RankedPair(
                    ids,
                    prefix + list(gens[best].token_ids),
                    prefix + list(gens[worst].token_ids),
                    scores[best],
                    scores[worst],
                    dict(row),
                )
            )
    stats = {
        "pairs": float(len(pairs)),
        "pair_rate": len(pairs) / max(1, len(rows)),
        "score_mean": sum(scores_all) / max(1, len(scores_all)),
    }
    return pairs, stats


def pairs_to_examples(pairs: list[RankedPair], trace: bool | None = None) -> list[Example]:
    """Preference examples built from token ids (no re-tokenization of sampled text)."""
    return [
        Example(
            index=i,
            sequences=[p.prompt_ids + p.chosen_ids, p.prompt_ids + p.rejected_ids],
            completion_starts=[len(p.prompt_ids), len(p.prompt_ids)],
            roles=[Role.CHOSEN, Role.REJECTED],
            trace=trace,
        )
        for i, p in enumerate(pairs)
    ]


def build_bvpo_examples(
    engine: RolloutEngine,
    rows: Sequence[dict[str, Any]],
    oracle: Oracle,
    sampling: SamplingParams,
    empty_trace: str = "<think>\n\n</think>\n\n",
) -> tuple[list[Example], dict[str, float]]:
    """BVPO's two pair sets from prompts: responses sampled with reasoning (trace pairs) and
    with the empty think block forced at the start of the response (empty-trace pairs)."""
    tokenizer = engine.tokenizer  # type: ignore[attr-defined]
    prefix = tokenizer.encode(empty_trace, add_special_tokens=False)
    trace_pairs, trace_stats = sample_and_rank(engine, rows, oracle, sampling)
    empty_pairs, empty_stats = sample_and_rank(engine, rows, oracle, sampling, prefix)
    examples = pairs_to_examples(trace_pairs, trace=True) + pairs_to_examples(
        empty_pairs, trace=False
    )
    for index, example in enumerate(examples):
        example.index = index
    stats = {f"trace/{k}": v for k, v in trace_stats.items()}
    stats |= {f"empty/{k}": v for k, v in empty_stats.items()}
    return examples, stats
