"""Calling a reward: a data row's columns and the user's parameters in, one finite number out.

A reward is a plain function ``fn(completion, **columns)``. Two failures used to be silent and
are refused here, each with one line naming the reward (and the data row):

- a configured parameter the function never reads (``{name: length_penalty, params:
  {target_lenght: 200}}`` swallowed by ``**_``) is refused before training, with did-you-mean;
- a result that is not a finite number (None, NaN, a string) or an exception while scoring.

Data columns reach a function only when it names them (or takes ``**kwargs``), so a reward
without a catch-all can be written with exactly the parameters it reads.
"""

from __future__ import annotations

import inspect
import math
import traceback
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alignlib.suggest import did_you_mean

__all__ = [
    "RewardError",
    "RewardSignature",
    "call_reward",
    "check_params",
    "describe_row",
    "failure",
    "reward_kwargs",
    "signature_of",
]

SUPPLIED = ("num_tokens",)
"""Keywords the caller fills in itself (never a data column or a user parameter)."""
NOT_COLUMNS = ("prompt", "completion")
"""Row fields that are not passed as columns (the completion is the first argument)."""


class RewardError(ValueError):
    """A reward that cannot be used as configured, or that returned no usable number."""


@dataclass(frozen=True)
class RewardSignature:
    named: tuple[str, ...]
    """Keyword-passable parameters after the completion."""
    required: tuple[str, ...]
    """Named parameters without a default: data columns every row must hold (math: answer)."""
    settings: tuple[str, ...]
    """Named parameters with a default: what ``params`` is for."""
    extra: Literal["none", "ignored", "read"]
    """Other keywords: refused (`none`), swallowed by ``**_`` (`ignored`), or read by a named
    ``**kwargs`` (`read`: parameters cannot be checked)."""


def signature_of(fn: Callable[..., Any]) -> RewardSignature:
    """What ``fn`` accepts besides the completion (its first positional parameter)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # some builtins and C callables have no signature
        return RewardSignature((), (), (), "read")
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if params and params[0].kind in positional:
        params = params[1:]
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = [p for p in params if p.kind in keyword]
    var = next((p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    extra: Literal["none", "ignored", "read"] = "none"
    if var is not None:
        extra = "ignored" if var.name.startswith("_") else "read"
    empty = inspect.Parameter.empty
    return RewardSignature(
        named=tuple(p.name for p in named),
        required=tuple(p.name for p in named if p.default is empty and p.name not in SUPPLIED),
        settings=tuple(p.name for p in named if p.default is not empty and p.name not in SUPPLIED),
        extra=extra,
    )


def check_params(
    name: str,
    fn: Callable[..., Any] | None,
    params: Mapping[str, Any],
    key: str,
    valid: Collection[str] | None = None,
) -> None:
    """Refuse a parameter ``fn`` would never see: ``key`` is where it was configured
    (``online.rewards[0].params``); ``valid`` overrides the accepted names (and is needed when
    ``fn`` is None: a reward the caller computes itself, with no function to read)."""
    if valid is None:
        assert fn is not None, "check_params: a reward without a function needs `valid`"
        sig = signature_of(fn)
        if sig.extra == "read":
            return  # a named **kwargs may read anything
        accepted, shown = [*sig.named], list(sig.settings)
    else:
        accepted = shown = list(valid)
    for param in params:
        if param not in accepted:
            raise RewardError(
                f"{key}.{param}: not a parameter of reward {name!r}"
                f"{did_you_mean(param, shown or accepted)}; valid: {', '.join(shown) or '(none)'}"
            )


def reward_kwargs(
    fn: Callable[..., Any],
    row: Mapping[str, Any],
    params: Mapping[str, Any],
    num_tokens: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments for one call: the row's columns ``fn`` takes, then ``params``, then
    ``num_tokens`` when ``fn`` accepts it."""
    sig = signature_of(fn)
    columns = {k: v for k, v in row.items() if k not in NOT_COLUMNS}
    if sig.extra == "none":
        columns = {k: v for k, v in columns.items() if k in sig.named}
    kwargs = columns | dict(params)
    if num_tokens is not None and ("num_tokens" in sig.named or sig.extra != "none"):
        kwargs["num_tokens"] = num_tokens
    return kwargs


def describe_row(row: Mapping[str, Any]) -> str:
    """`the data row with prompt 'What is 2 + 3?…'` (rows are named by their prompt's start)."""
    prompt = row.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], Mapping):
        prompt = prompt[-1].get("content")
    text = str(prompt)
    shown = text if len(text) <= 60 else text[:60] + "…"
    return f"the data row with prompt {shown!r}"


def as_number(
    value: object, name: str, row: Mapping[str, Any], allow_nonfinite: bool = False
) -> float:
    where = f"for a completion of {describe_row(row)}"
    if value is None or isinstance(value, (str, bytes)) or not hasattr(value, "__float__"):
        raise RewardError(
            f"reward {name!r} returned {type(value).__name__} {value!r:.40} {where}; a reward "
            "must return a finite number"
        )
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:  # a tensor of several
        raise RewardError(
            f"reward {name!r} returned {type(value).__name__}, not one number, {where} ({exc})"
        ) from None
    if not math.isfinite(number) and not allow_nonfinite:
        raise RewardError(
            f"reward {name!r} returned {number} {where}; a reward must return a finite number "
            "(a non-finite reward would poison every advantage of its group)"
        )
    return number


def call_reward(
    fn: Callable[..., Any],
    name: str,
    completion: str,
    row: Mapping[str, Any],
    params: Mapping[str, Any],
    num_tokens: int | None = None,
    allow_nonfinite: bool = False,
) -> float:
    """``fn(completion, **columns, **params)`` as a finite float, or one line naming the reward
    and the row (the original exception stays chained for debugging). ``allow_nonfinite``
    passes NaN/inf through (`train.nonfinite: skip`: the step's gradient is then non-finite and
    the optimizer step is skipped with a warning and counted)."""
    try:
        value = fn(completion, **reward_kwargs(fn, row, params, num_tokens))
    except RewardError:
        raise
    except Exception as exc:  # user code: any failure is reported with its reward and row
        raise failure(exc, name, row) from exc
    return as_number(value, name, row, allow_nonfinite)


def failure(
    exc: BaseException, name: str, row: Mapping[str, Any], batch: int | None = None
) -> RewardError:
    """One line for an exception raised by user code while scoring a row, or a batch of
    ``batch`` completions starting at ``row`` (a TRL-form call); it names the line of the
    reward's own code that raised (the original stays chained for debugging)."""
    if isinstance(exc, RewardError):
        return exc
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    scored = (
        f"a batch of {batch} completions (the first of {describe_row(row)})"
        if batch is not None
        else f"a completion of {describe_row(row)}"
    )
    return RewardError(
        f"reward {name!r} raised {type(exc).__name__}{': ' + detail if detail else ''}"
        f"{raised_at(exc)} for {scored}; fix the reward function or the row"
    )


def raised_at(exc: BaseException) -> str:
    """' (at FILE line N, in FUNC)' for the innermost frame outside alignlib's own reward
    calling code, or '' when there is none."""
    ours = {
        Path(__file__).resolve().parent / "calling.py",
        Path(__file__).resolve().parent / "forms.py",
    }
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() not in ours
    ]
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {last.filename} line {last.lineno}, in {last.name})"
