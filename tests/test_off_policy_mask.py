"""Off-policy sequence masking (DeepSeek-V3.2, eq. 9): the rows it masks equal TRL 1.16's own
``get_off_policy_mask``, the gradient equals the paper's formula (float64), demonstrations and
positive advantages are never masked, and an online run hands it the engine's log-probs on the
trainer's scale (also under top-p)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from batches import rel_error, rl_batch

from alignlib.config import load_config
from alignlib.estimator import (
    Batch,
    OffPolicySequenceMask,
    PPOClip,
    Role,
    UnifiedEstimator,
)

DELTA = 0.1


def drifted_batch(seed: int, with_engine: bool = True) -> Batch:
    """GRPO rows whose engine log-probs drift from the policy by a per-row amount."""
    batch = rl_batch(num_groups=6, group_size=4, width=10, seed=seed, spread=0.1)
    gen = torch.Generator().manual_seed(100 + seed)
    rows = batch.mask.shape[0]
    shift = torch.rand(rows, 1, generator=gen, dtype=torch.float64) * 0.3
    noise = 0.05 * torch.randn(batch.mask.shape, generator=gen, dtype=torch.float64)
    drifted = batch.logprobs.detach() + shift + noise
    if with_engine:  # the engine sampled from a drifted policy; π_old is close to π_θ
        return batch.replace(behaviour_logprobs=drifted)
    return batch.replace(old_logprobs=drifted)  # no engine log-probs: the drift is π_old's


def grpo_with(mask: OffPolicySequenceMask) -> UnifiedEstimator:
    estimator = UnifiedEstimator(
        mask=PPOClip(), reference="old", advantage="grpo", aggregation="seq-mean-token-mean"
    )
    return estimator.with_sample_mask(mask)


def group_advantages(batch: Batch) -> torch.Tensor:
    rewards = batch.rewards.view(-1, 4)
    adv = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)
    return adv.reshape(-1, 1)


def trl_keep(batch: Batch, sampling: torch.Tensor) -> torch.Tensor:
    """[R] TRL 1.16's GRPOTrainer.get_off_policy_mask, 1 = keep."""
    from trl import GRPOTrainer

    keep = GRPOTrainer.get_off_policy_mask(
        advantages=group_advantages(batch),
        per_token_logps=batch.logprobs.detach(),
        sampling_per_token_logps=sampling,
        mask=batch.mask,
        off_policy_threshold=DELTA,
    )
    return keep.flatten().bool()


def paper_loss(batch: Batch, keep: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3.2's GRPO objective with M_{i,t}: per-sequence token means of
    −min(ρÂ, clip(ρ)Â)·M, averaged over the sequences (written from the formula)."""
    adv = group_advantages(batch).expand_as(batch.mask)
    ratio = torch.exp(batch.logprobs - batch.old_logprobs)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
    kept = keep.to(batch.mask.dtype).unsqueeze(-1) * batch.mask
    per_row = -(surrogate * kept).sum(-1) / batch.mask.sum(-1)
    return per_row.mean()


@pytest.mark.parametrize("with_engine", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_rows_and_gradient_equal_trl_and_the_paper(seed: int, with_engine: bool) -> None:
    batch = drifted_batch(seed, with_engine)
    sampling = batch.behaviour_logprobs if with_engine else batch.old_logprobs
    keep = trl_keep(batch, sampling)
    assert 0 < int((~keep).sum()) < keep.numel() // 2  # some rows masked, most kept
    estimator = grpo_with(OffPolicySequenceMask(delta=DELTA))
    out = estimator(batch)
    ours = torch.autograd.grad(out.loss, batch.logprobs)[0]
    want = torch.autograd.grad(paper_loss(batch, keep), batch.logprobs)[0]
    assert rel_error(ours, want) < 1e-10
    masked = out.metrics["pg/off_policy_masked"]
    share = float((batch.mask * (~keep).unsqueeze(-1)).sum() / batch.mask.sum())
    assert abs(float(masked) - share) < 1e-12


def test_only_sampled_rows_with_negative_advantage_are_masked() -> None:
    batch = drifted_batch(0)
    far = batch.replace(behaviour_logprobs=batch.logprobs.detach() + 5.0)  # every row drifted
    estimator = grpo_with(OffPolicySequenceMask(delta=DELTA))
    grad = torch.autograd.grad(estimator(far).loss, far.logprobs)[0]
    adv = group_advantages(far).flatten()
    live = (grad.abs() * far.mask).sum(-1) > 0
    assert torch.equal(live, adv > 0)  # negative rows masked; zero-advantage rows have no grad
    roles = torch.full_like(far.rewards, int(Role.DEMO), dtype=torch.long)
    demos = far.replace(roles=roles)
    grad = torch.autograd.grad(estimator(demos).loss, demos.logprobs)[0]
    assert bool(((grad.abs() * demos.mask).sum(-1) > 0)[adv != 0].all())


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_an_online_run_gives_it_the_engines_logprobs_on_the_trainers_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, top_p: float
) -> None:
    """The transformers engine samples from the policy the old pass scores: its log-probs, with
    log S_t added under top-p, equal π_old on every sampled token."""
    import alignlib.trainer.update as update
    from alignlib.trainer.loop import Trainer
    from tests.test_online import make_config

    config = make_config(
        tmp_path,
        algorithm={"name": "grpo", "off_policy_mask": {"delta": 0.5}},
        rollout={"n": 4, "max_new_tokens": 6, "temperature": 0.9, "top_p": top_p},
        online={"mini_batches": 2},
        train={"max_steps": 1},
    )
    gaps: list[float] = []
    accumulate = update.accumulate

    def checking(kernel: Any, estimator: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        fields = batch.fields
        sampled = (fields.mask > 0) & (fields.roles == int(Role.SAMPLE)).unsqueeze(-1)
        assert fields.behaviour_logprobs is not None and bool(sampled.any())
        gap = (fields.behaviour_logprobs - fields.old_logprobs).abs()[sampled]
        gaps.append(float(gap.max()))
        return accumulate(kernel, estimator, batch, *args, **kwargs)

    monkeypatch.setattr(update, "accumulate", checking)
    Trainer(load_config(config)).train()
    assert len(gaps) == 2 and max(gaps) < 1e-4, gaps
