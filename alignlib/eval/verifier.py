"""`eval.verifier`: a learned reward model (or PRM) scores every sample, so that best@k can pick
the one it rates highest. Checked from its config.json before the policy loads; loaded onto the
device the evaluated model runs on."""

from __future__ import annotations

from typing import Any

from alignlib.device import resolve_device
from alignlib.eval.config import EvalConfig
from alignlib.rewards.learned import LearnedReward


def build_verifier(config: EvalConfig, model: Any | None = None) -> LearnedReward | None:
    """The configured verifier (not loaded yet), on ``model``'s device when evaluating an
    in-memory model, else on ``eval.device``; None without one."""
    spec = config.verifier
    if spec is None:
        return None
    parameters = next(iter(model.parameters()), None) if model is not None else None
    device = parameters.device if parameters is not None else resolve_device(config.device)
    return LearnedReward.checked(spec.name, spec.params, "eval.verifier.params", device)


def score_samples(verifier: LearnedReward | None, records: list[dict[str, Any]]) -> None:
    """Each sampled record gets `verifier`: its score (one batched pass per benchmark); nothing
    without a verifier."""
    samples = [(r["prompt"], s) for r in records for s in r["samples"]]
    if verifier is None or not samples:
        return
    scores, _ = verifier.score([p for p, _ in samples], [s["text"] for _, s in samples])
    for (_, sample), score in zip(samples, scores, strict=True):
        sample["verifier"] = float(score)
