"""Sample K responses per prompt from the current policy, rank them with a preference oracle,
and keep (best, worst) as a preference pair. The preference iterations (`iterative:`) and
BVPO's pair building share it.

With a scalar oracle (a verifiable reward or a reward model), the best and worst of K are
exactly what INPO's knockout tournament returns under a Bradley–Terry preference model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignlib.data import Example
from alignlib.estimator import Role
from alignlib.rollout.base import RolloutEngine, SamplingParams

Oracle = Callable[[Sequence[str], Sequence[str], Sequence[dict[str, Any]]], list[float]]
"""(prompts, completions, rows) → one score per completion; higher is preferred."""


_SEQ_CLS = "ForSequenceClassification"


def _architectures(config_file: Path) -> list[str]:
    """The ``architectures`` names in a model's config.json."""
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"iterative.oracle: cannot read {config_file}: {exc}") from None
    architectures = config.get("architectures") if isinstance(config, dict) else None
    return [a for a in architectures or [] if isinstance(a, str)]


def check_reward_model_folder(path: str) -> str:
    """``path`` if it is a sequence-classification model folder or Hub id (read from its
    config.json, before any weights load); otherwise a one-line ValueError naming
    ``iterative.oracle``."""
    folder = Path(path).expanduser()
    what = "reward models are sequence-classification models (AutoModelForSequenceClassification)"
    if not path:
        raise ValueError(
            "iterative.oracle: reward_model: needs a folder, e.g. reward_model:/path/rm"
        )
    if not folder.exists():
        hub_id = not folder.is_absolute() and path.count("/") == 1 and path[0] not in ".~"
        if not hub_id:
            raise ValueError(f"iterative.oracle: {path} does not exist; give a reward model folder")
        names = _hub_architectures(path)
    else:
        names = _local_architectures(folder, path, what)
    if not any(name.endswith(_SEQ_CLS) for name in names):
        kind = f"a {names[0]}" if names else "a model with no 'architectures' in its config.json"
        raise ValueError(
            f"iterative.oracle: {path} is {kind}, not a sequence-classification reward model (its "
            "score head would be random); give a reward model folder or a reward name"
        )
    return path if not folder.exists() else str(folder)


def _hub_architectures(model_id: str) -> list[str]:
    """A Hub reward model's ``architectures``, from its config alone (no weights)."""
    from transformers import AutoConfig

    try:
        return list(getattr(AutoConfig.from_pretrained(model_id), "architectures", None) or [])
    except Exception as exc:  # offline, unknown repo, gated: all mean "cannot use it"
        raise ValueError(
            f"iterative.oracle: {model_id} is not a local folder and its Hub config could not be "
            f"read ({type(exc).__name__}); give a reward model folder"
        ) from None


def _local_architectures(folder: Path, path: str, what: str) -> list[str]:
    if not folder.is_dir():
        raise ValueError(f"iterative.oracle: {path} is a file; give a reward model folder")
    config_file = folder / "config.json"
    if not config_file.is_file():
        if (folder / "final" / "config.json").is_file():
            final = folder / "final"
            if any(name.endswith(_SEQ_CLS) for name in _architectures(final / "config.json")):
                raise ValueError(
                    f"iterative.oracle: {path} is a run folder; give its model: "
                    f"reward_model:{final}"
                )
            raise ValueError(
                f"iterative.oracle: {path} is a training run folder (its model, {final}, is a "
                f"causal LM); {what}: give a reward model folder or a reward name"
            )
        raise ValueError(
            f"iterative.oracle: {path} has no config.json, so it is not a model folder; {what}"
        )
    return _architectures(config_file)


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
