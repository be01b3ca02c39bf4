"""alignlib: post-training for LLMs as one unified policy-gradient estimator.

``alignlib.Trainer(config).train()`` runs a config (a RunConfig, a YAML path or a dict); it is
imported on first use, so ``import alignlib`` stays light (no torch, transformers or ray until a
trainer is needed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from alignlib.version import __version__

__all__ = ["Trainer", "__version__"]

if TYPE_CHECKING:
    from alignlib.trainer.loop import Trainer


def __getattr__(name: str) -> Any:
    """PEP 562: the heavy ``Trainer`` on first access."""
    if name == "Trainer":
        from alignlib.trainer.loop import Trainer

        return Trainer
    raise AttributeError(f"module 'alignlib' has no attribute {name!r}")
