"""The hint an unknown name gets, the same in every registry and config check: the closest valid
name, when one is close. A leaf: every layer may import it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["did_you_mean"]


def did_you_mean(name: object, valid: Iterable[str]) -> str:
    """``" (did you mean 'X'?)"`` for the valid name closest to ``name``, or ``""`` when none
    is close (difflib's ratio ≥ 0.6)."""
    match = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""
