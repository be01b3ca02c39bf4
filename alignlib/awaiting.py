"""Awaiting user coroutines (async rewards, async environments) from synchronous code.

One event loop runs on a daemon thread for the whole process (as TRL does): a caller that
already runs a loop (a notebook) is not disturbed, and async clients created on that loop (an
HTTP client of an LLM judge or a sandbox) keep working from one call to the next.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

__all__ = ["resolve_awaitables"]

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _loop() -> asyncio.AbstractEventLoop:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed():
            _LOOP = asyncio.new_event_loop()
            thread = threading.Thread(target=_LOOP.run_forever, name="alignlib-async", daemon=True)
            thread.start()
        return _LOOP


def resolve_awaitables(values: list[Any]) -> list[Any]:
    """``values`` with every awaitable replaced by its result (or the exception it raised), all
    awaited concurrently; a list without awaitables comes back as it is."""
    pending = [i for i, v in enumerate(values) if inspect.isawaitable(v)]
    if not pending:
        return values

    async def gather() -> list[Any]:
        return await asyncio.gather(*(values[i] for i in pending), return_exceptions=True)

    done = asyncio.run_coroutine_threadsafe(gather(), _loop()).result()
    out = list(values)
    for i, value in zip(pending, done, strict=True):
        out[i] = value
    return out
