"""The lines alignlib itself prints while a run goes on, in the CLI's `alignlib: error:` style:
on stderr, one line each, so a user (or a log grep) tells them from the library's own output."""

from __future__ import annotations

import sys


def notice(message: str) -> None:
    """One ``alignlib: ...`` line (where the run's earlier data went, what resume applied)."""
    print(f"alignlib: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """One ``alignlib: warning: ...`` line: legitimate but suspicious input, a skipped step."""
    notice(f"warning: {message}")
