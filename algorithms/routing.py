"""Which router builds an online run's rows: the preset's own (``UnifiedEstimator.router``),
or the one ``online.routing`` names.

The trainer calls :func:`router_for` and never names a method: presets carry their data side
(HPT's gate, LUFFY's demonstrations), and the older YAML keys ``online.routing: hpt | luffy |
none`` and ``online.hpt_gamma`` are resolved here, next to the routers they name, so shipped
configs keep working unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from alignlib.algorithms.hpt import HptGate
from alignlib.algorithms.luffy import LuffyDemonstrations
from alignlib.estimator import AllRollouts, Router, UnifiedEstimator

ROUTERS: dict[str, Callable[[], Router]] = {
    "none": AllRollouts,
    "hpt": HptGate,
    "luffy": LuffyDemonstrations,
}
"""The routers ``online.routing`` may name (``auto``: the preset's own)."""


def router_for(estimator: UnifiedEstimator, online: Any) -> Router:
    """The router of a run: ``online.routing`` (auto → the preset's router, none when it has
    none), with ``online.hpt_gamma`` (when set) as the gate's γ."""
    routing = getattr(online, "routing", "auto")
    own = estimator.router
    if routing == "auto":
        router: Router = own if own is not None else AllRollouts()
    elif own is not None and isinstance(own, type(ROUTERS[routing]())):
        router = own  # the preset's own, with its parameters
    else:
        router = ROUTERS[routing]()
    gamma = getattr(online, "hpt_gamma", None)
    if gamma is None:
        return router
    if not (dataclasses.is_dataclass(router) and hasattr(router, "gamma")):
        raise ValueError(
            f"online.hpt_gamma: this run's routing ({type(router).__name__}) has no gate to set; "
            "remove the key (an HPT preset's gate is algorithm.params.gamma)"
        )
    return dataclasses.replace(router, gamma=gamma)  # type: ignore[type-var]
