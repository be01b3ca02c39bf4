"""Named presets: one short file per published method, each a composition of UPGE components.

>>> from alignlib import algorithms
>>> algorithms.available()
>>> estimator = algorithms.get("dpo", beta=0.05)
"""

from alignlib.algorithms import (  # noqa: F401  (importing registers each preset)
    aot,
    aot_unpaired,
    apo_down,
    apo_zero,
    apo_zero_unpaired,
    bco_pair,
    bvpo,
    cispo,
    clip_cov,
    cpo,
    dapo,
    discopop,
    dpo,
    dppo,
    dr_grpo,
    exo_pair,
    gdpo,
    gmpo,
    gpg,
    grpo,
    grpo_passk,
    grpo_process,
    gspo,
    hinge,
    hpt,
    inpo,
    ipo,
    kl_cov,
    kto,
    lite_ppo,
    luffy,
    luspo,
    mpo,
    nca_pair,
    opd,
    opo,
    orpo,
    passk_training,
    pkpo,
    ppo,
    ppo_gae,
    reward_model,
    rloo,
    robust,
    rpo,
    sapo,
    sft,
    simpo,
    sppo_hard,
    tpo,
    tpo_l,
    vespo,
)
from alignlib.algorithms.registry import PRESETS, available, describe, get, parameters, preset
from alignlib.algorithms.routing import ROUTERS, router_for

__all__ = [
    "PRESETS",
    "ROUTERS",
    "available",
    "describe",
    "get",
    "parameters",
    "preset",
    "router_for",
]
