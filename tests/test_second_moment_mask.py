"""M2PO's second-moment mask (Zheng et al. 2025; AReaL's ``m2_threshold``): the tokens it keeps
are those a loop dropping the largest (log π_old − log π_behaviour)² finds (AReaL's rule), the
mean of the kept is below τ and dropping one token fewer would not be, the loss and gradient
equal GRPO's over the kept tokens only (float64), the selection does not depend on the
micro-batch split, and online the trainer gives it π_old and the engine's log-probs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from batches import mismatch_batch, rel_error
from test_microbatch import accumulated_grad

from alignlib.config import load_config
from alignlib.estimator import Batch, PPOClip, SecondMomentMask, UnifiedEstimator
from alignlib.estimator.off_policy_masks import second_moment_keep

TAU = 0.04


def grpo(threshold: float = TAU) -> UnifiedEstimator:
    base = UnifiedEstimator(mask=PPOClip(), reference="old", advantage="grpo")
    return base.with_sample_mask(SecondMomentMask(threshold))


def loop_keep(b: Batch, tau: float) -> set[tuple[int, int]]:
    """AReaL's rule by a plain loop: drop the largest squared gap while the mean of the rest
    is at least τ (always leaving one token)."""
    gaps = [
        (float((b.old_logprobs[i, t] - b.behaviour_logprobs[i, t]) ** 2), i * 100 + t, (i, t))
        for i, t in b.mask.nonzero().tolist()
    ]
    gaps.sort(key=lambda g: (-g[0], g[1]))
    while len(gaps) > 1 and sum(g[0] for g in gaps) / len(gaps) >= tau:
        gaps.pop(0)
    return {g[2] for g in gaps}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_kept_tokens_are_areal_s_and_minimal_to_drop(seed: int) -> None:
    b = mismatch_batch(seed=seed, spread=0.4)
    m2 = (b.old_logprobs - b.behaviour_logprobs) ** 2
    keep = second_moment_keep(m2, b.mask > 0, TAU)
    assert {tuple(x) for x in keep.nonzero().tolist()} == loop_keep(b, TAU)
    kept, valid = m2[keep], m2[b.mask > 0]
    assert float(kept.mean()) < TAU <= float(valid.mean())  # the mask had work to do
    assert 0 < int(keep.sum()) < int((b.mask > 0).sum())
    smallest_dropped = float(valid.sort(descending=True).values[len(valid) - len(kept) - 1])
    assert float((kept.sum() + smallest_dropped) / (len(kept) + 1)) >= TAU  # none dropped too many


def test_the_loss_is_grpo_s_over_the_kept_tokens_only() -> None:
    """Token-mean GRPO with the dropped tokens out of both the sum and the count."""
    b = mismatch_batch(seed=4, spread=0.4)
    keep = second_moment_keep(
        (b.old_logprobs - b.behaviour_logprobs) ** 2, b.mask > 0, TAU
    ).double()
    rewards = b.rewards.view(-1, 4)
    adv = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)
    adv = adv.reshape(-1, 1)
    ratio = torch.exp(b.logprobs - b.old_logprobs)
    clipped = torch.maximum(-ratio * adv, -ratio.clamp(0.8, 1.2) * adv)
    want = (clipped * keep).sum() / keep.sum()
    base = UnifiedEstimator(
        mask=PPOClip(), reference="old", advantage="grpo", aggregation="token-mean"
    )
    out = base.with_sample_mask(SecondMomentMask(TAU))(b)
    got = torch.autograd.grad(out.loss, b.logprobs)[0]
    assert rel_error(got, torch.autograd.grad(want, b.logprobs)[0]) < 1e-12
    assert abs(float(out.loss) - float(want)) < 1e-12


def test_the_selection_does_not_depend_on_the_micro_batches() -> None:
    b = mismatch_batch(seed=5, spread=0.4)
    whole = accumulated_grad(grpo(), b, 1)
    assert rel_error(accumulated_grad(grpo(), b, 4), whole) < 1e-12
    unmasked = UnifiedEstimator(mask=PPOClip(), reference="old", advantage="grpo")
    assert rel_error(accumulated_grad(unmasked, b, 1), whole) > 1e-3  # the mask acts


def test_an_online_run_gives_it_pi_old_and_the_engine_s_logprobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import alignlib.trainer.update as update
    from alignlib.trainer.loop import Trainer
    from tests.test_online import make_config

    config = make_config(
        tmp_path,
        algorithm={"name": "grpo", "second_moment_mask": {"threshold": 1e-6}},
        train={"max_steps": 1},
    )
    gaps: list[float] = []
    accumulate = update.accumulate

    def checking(kernel: Any, estimator: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        fields = batch.fields
        sampled = fields.mask > 0
        assert fields.behaviour_logprobs is not None
        # π_old from a no-grad pass before prepare (not the zeros the update's forward fills):
        # the transformers engine samples from the very policy it scores.
        gaps.append(float((fields.old_logprobs - fields.behaviour_logprobs).abs()[sampled].max()))
        return accumulate(kernel, estimator, batch, *args, **kwargs)

    monkeypatch.setattr(update, "accumulate", checking)
    result = Trainer(load_config(config)).train()
    assert len(gaps) == 1 and gaps[0] < 1e-4, gaps
    assert "grpo/m2_dropped" in result.history[-1]
