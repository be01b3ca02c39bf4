"""Rollout engines (transformers, vLLM) behind one interface, Ray workers, and multi-turn
episodes with an environment over any of them.

`from alignlib.rollout import SamplingParams, create_engine` is cheap; the engine classes and
the Ray pool are imported on first access (Ray and vLLM are heavy, vLLM optional).
"""

from typing import Any

from alignlib.rollout.base import (
    Generation,
    RolloutEngine,
    RolloutOutput,
    SamplingParams,
    available_engines,
    create_engine,
    register_engine,
)
from alignlib.rollout.environment import (
    EpisodeRunner,
    EpisodeSettings,
    available_environments,
    register_environment,
)

_LAZY = {
    "HFEngine": "alignlib.rollout.hf_engine",
    "VLLMEngine": "alignlib.rollout.vllm_engine",
    "RayRolloutPool": "alignlib.rollout.ray_workers",
}

__all__ = [
    "EpisodeRunner",
    "EpisodeSettings",
    "Generation",
    "RolloutEngine",
    "RolloutOutput",
    "SamplingParams",
    "available_engines",
    "available_environments",
    "create_engine",
    "register_engine",
    "register_environment",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'alignlib.rollout' has no attribute {name!r}")
