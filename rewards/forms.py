"""Reward functions written for TRL or verl, called unchanged, and async rewards run concurrently.

Three calling conventions are accepted, so a user's existing file works without edits:

- ``alignlib``: ``fn(completion, **columns) -> float``, one call per completion.
- ``trl``: ``fn(completions, **columns) -> list[float | None]``, one call per batch; each column
  arrives as a list (one value per completion), completions are strings, or assistant message
  lists ``[{"role": "assistant", "content": ...}]`` when the prompts are conversational.
  ``None`` means "no opinion": that reward's term is left out of the weighted sum (TRL's
  ``nansum`` over reward functions), so a completion scored by no function gets 0.
- ``verl``: ``compute_score(data_source, solution_str, ground_truth, extra_info) -> float | dict``,
  one call per completion; a dict contributes its ``"score"``. The ground truth is the row's
  ``reward_model.ground_truth`` (verl's layout), else ``ground_truth``, else ``answer``.

The form is read from the signature (TRL's first parameter is ``completions``, ``prompts``,
``completion_ids`` or ``environments``: the episodes' environment instances in a multi-turn run;
verl's ``data_source``); ``online.rewards[].form`` forces one. A function that returns
awaitables (``async def``: an LLM judge behind an HTTP client) has all its calls of a batch
awaited together on one long-lived event loop, so clients bound to that loop keep working across
steps.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from alignlib.awaiting import resolve_awaitables
from alignlib.rewards.calling import (
    NOT_COLUMNS,
    RewardError,
    as_number,
    failure,
    reward_kwargs,
    signature_of,
)

__all__ = [
    "Form",
    "detect_form",
    "ground_truth",
    "missing_columns",
    "reads_environments",
    "resolve_form",
    "score_batch",
    "supplied_names",
]

Form = Literal["alignlib", "trl", "verl"]
TRL_FIRST = ("completions", "prompts", "completion_ids", "environments")
"""TRL passes everything by keyword; its rewards start with one of these."""
TRL_SUPPLIED = (
    "prompts",
    "completions",
    "completion_ids",
    "environments",
    "trainer_state",
    "log_extra",
    "log_metric",
)
VERL_FIRST = ("data_source", "solution_str")
"""verl's `compute_score` starts with data_source; its per-dataset scorers with solution_str."""
VERL_SUPPLIED = ("data_source", "solution_str", "ground_truth", "extra_info")


def _parameter_names(fn: Callable[..., Any]) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # builtins without a signature: alignlib's form
        return []


def detect_form(fn: Callable[..., Any]) -> Form:
    """The calling convention ``fn`` was written for, from its parameter names."""
    names = _parameter_names(fn)
    first = names[0] if names else None
    if first in TRL_FIRST or "completions" in names:
        return "trl"
    if first in VERL_FIRST or {"solution_str", "ground_truth"} <= set(names):
        return "verl"
    return "alignlib"


def resolve_form(fn: Callable[..., Any], form: str = "auto") -> Form:
    """``form`` unless it is `auto`, then the detected one."""
    if form == "auto":
        return detect_form(fn)
    if form not in ("alignlib", "trl", "verl"):
        raise RewardError(f"reward form {form!r}: use auto, alignlib, trl or verl")
    return form  # type: ignore[return-value]


def supplied_names(fn: Callable[..., Any], form: str = "auto") -> tuple[str, ...]:
    """Parameters the caller fills in for ``fn``'s form (never data columns)."""
    chosen = resolve_form(fn, form)
    return {"trl": TRL_SUPPLIED, "verl": VERL_SUPPLIED}.get(chosen, ())


def reads_environments(fn: Callable[..., Any], form: str = "auto") -> bool:
    """A TRL reward that reads the episodes' environment instances (``environments``)."""
    return resolve_form(fn, form) == "trl" and "environments" in _parameter_names(fn)


def missing_columns(
    fn: Callable[..., Any], params: Mapping[str, Any], row: Mapping[str, Any]
) -> list[str]:
    """Required parameters of ``fn`` that neither ``params`` nor the row provides (a null
    value counts as missing: a jsonl loader fills absent fields with null). What a TRL or verl
    reward is handed by the caller (``prompts``, ``ground_truth``, ...) is not a column."""
    supplied = supplied_names(fn)
    return [
        name
        for name in signature_of(fn).required
        if name not in params and name not in supplied and row.get(name) is None
    ]


def _call_each(
    calls: Sequence[Callable[[], Any]],
    name: str,
    rows: Sequence[Mapping[str, Any]],
    batch: int | None = None,
) -> list[Any]:
    """Call each thunk (a sync failure stops at its row at once), then await what is async;
    ``batch``: the one thunk scores that many completions (a TRL-form call)."""
    values: list[Any] = []
    for call, row in zip(calls, rows, strict=True):
        try:
            values.append(call())
        except Exception as exc:  # user code: reported with its reward and row
            raise failure(exc, name, row, batch) from exc
    results = resolve_awaitables(values)
    for value, row in zip(results, rows, strict=True):
        if isinstance(value, BaseException):
            raise failure(value, name, row, batch) from value
    return results


# ------------------------------------------------------------------------------------ the forms
def _accepted(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keywords ``fn`` can take: all with a ``**kwargs``, else only the named ones (TRL
    hands every column to every reward; a function without a catch-all would reject them)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return kwargs
    named = {p.name for p in params if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    return {k: v for k, v in kwargs.items() if k in named}


def _conversational(rows: Sequence[Mapping[str, Any]]) -> bool:
    return any(isinstance(row.get("prompt"), list) for row in rows)


def _trl_kwargs(
    texts: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    token_ids: Sequence[Sequence[int]] | None,
    environments: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """What TRL's GRPOTrainer passes: prompts, completions, completion_ids, every other column
    as a list, the episodes' environments (multi-turn runs), trainer_state and its logging
    hooks (no-ops here), then the user's params."""
    keys = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in NOT_COLUMNS]
    chat = _conversational(rows)
    completions: list[Any] = [[{"role": "assistant", "content": t}] if chat else t for t in texts]
    return {
        "prompts": [row.get("prompt") for row in rows],
        "completions": completions,
        "completion_ids": [list(ids) for ids in token_ids] if token_ids is not None else None,
        **{k: [row.get(k) for row in rows] for k in keys},
        **({"environments": list(environments)} if environments is not None else {}),
        "trainer_state": None,
        "log_extra": lambda *args, **kwargs: None,
        "log_metric": lambda *args, **kwargs: None,
        **params,
    }


def _score_trl(
    fn: Callable[..., Any],
    name: str,
    texts: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    token_ids: Sequence[Sequence[int]] | None,
    environments: Sequence[Any] | None,
) -> list[Any]:
    """One batched call; its list must hold one value per completion."""
    kwargs = _accepted(fn, _trl_kwargs(texts, rows, params, token_ids, environments))
    values = _call_each([lambda: fn(**kwargs)], name, rows[:1], batch=len(texts))[0]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise RewardError(
            f"reward {name!r} (TRL form) returned {type(values).__name__}, not a list with one "
            f"value per completion ({len(texts)} expected)"
        )
    if len(values) != len(texts):
        raise RewardError(
            f"reward {name!r} (TRL form) returned {len(values)} values for {len(texts)} "
            "completions; return exactly one per completion (None for no opinion)"
        )
    return list(values)


def ground_truth(row: Mapping[str, Any]) -> Any:
    """verl keeps it in ``reward_model.ground_truth``; alignlib's rows call it ``answer``."""
    nested = row.get("reward_model")
    if isinstance(nested, Mapping) and nested.get("ground_truth") is not None:
        return nested["ground_truth"]
    return row["ground_truth"] if row.get("ground_truth") is not None else row.get("answer")


def _verl_call(
    fn: Callable[..., Any], text: str, row: Mapping[str, Any], params: Mapping[str, Any]
):
    kwargs = {
        "data_source": row.get("data_source") or "",
        "solution_str": text,
        "ground_truth": ground_truth(row),
        "extra_info": row.get("extra_info") or {},
        **params,
    }
    accepted = _accepted(fn, kwargs)
    return lambda: fn(**accepted)


def _verl_score(value: Any, name: str) -> Any:
    """verl's compute_score may return {"score": ..., <extra metrics>}."""
    if isinstance(value, Mapping):
        if "score" not in value:
            raise RewardError(
                f"reward {name!r} (verl form) returned a dict without 'score' "
                f"(keys: {', '.join(map(str, value))})"
            )
        return value["score"]
    return value


def score_batch(
    fn: Callable[..., Any],
    name: str,
    texts: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    num_tokens: Sequence[int] | None = None,
    *,
    form: str = "auto",
    token_ids: Sequence[Sequence[int]] | None = None,
    allow_nonfinite: bool = False,
    environments: Sequence[Any] | None = None,
) -> list[float]:
    """The reward of each completion ``texts[i]`` of ``rows[i]``, whatever ``fn``'s form: a
    finite float each (``allow_nonfinite`` passes NaN/inf through), 0.0 where a TRL reward
    returned None (no opinion), or one line naming the reward and the row. ``environments``:
    each completion's episode environment, for TRL rewards that read them."""
    chosen = resolve_form(fn, form)
    if not texts:
        return []
    counts = list(num_tokens) if num_tokens is not None else [None] * len(texts)
    if chosen == "trl":
        values = _score_trl(fn, name, texts, rows, params, token_ids, environments)
    elif chosen == "verl":
        calls = [_verl_call(fn, t, r, params) for t, r in zip(texts, rows, strict=True)]
        values = [_verl_score(v, name) for v in _call_each(calls, name, rows)]
    else:
        calls = [
            (lambda t=t, r=r, n=n: fn(t, **reward_kwargs(fn, r, params, n)))
            for t, r, n in zip(texts, rows, counts, strict=True)
        ]
        values = _call_each(calls, name, rows)
    return [
        0.0 if value is None and chosen == "trl" else as_number(value, name, row, allow_nonfinite)
        for value, row in zip(values, rows, strict=True)
    ]
