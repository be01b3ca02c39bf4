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


def quiet_library_bars() -> None:
    """transformers' and the Hub's own progress bars off too (loading weights, writing shards):
    `logging.progress: false` means no bar at all."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    disable_progress_bars()
