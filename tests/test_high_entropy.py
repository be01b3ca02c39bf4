"""The high-entropy ("forking") token mask (Wang et al. 2025): its selections against the
reference code's rule and TRL's own function, its gradient against a closed form (float64)
under both denominators, micro-batch invariance, the `algorithm.high_entropy` option, and a run
whose every mini-batch selects by the policy's true entropy at that moment."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from batches import rel_error, rl_batch, split_gradient

from alignlib.config import load_config
from alignlib.config.algorithm import AlgorithmConfig
from alignlib.config.estimator import build_estimator
from alignlib.estimator import Batch, HighEntropyTokens, PPOClip, UnifiedEstimator
from alignlib.estimator.entropy_masks import linear_quantile, quantile_tokens, top_k_tokens

EPS_LOW, EPS_HIGH = 0.2, 0.28


def random_entropy(rows: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    entropy = torch.rand(rows, width, generator=gen) * 4
    valid = torch.rand(rows, width, generator=gen) < 0.7
    return entropy, valid


@pytest.mark.parametrize(("rows", "width", "ratio"), [(3, 5, 0.2), (4, 7, 0.5), (5, 9, 0.05)])
def test_top_k_keeps_the_ceil_of_rho_n_highest_valid_tokens(
    rows: int, width: int, ratio: float
) -> None:
    entropy, valid = random_entropy(rows, width, seed=rows)
    cells = [(float(entropy[i, j]), i, j) for i in range(rows) for j in range(width) if valid[i, j]]
    k = max(1, math.ceil(round(ratio * len(cells), 9)))
    want = torch.zeros(rows, width, dtype=torch.bool)
    for _, i, j in sorted(cells, reverse=True)[:k]:
        want[i, j] = True
    assert torch.equal(top_k_tokens(entropy, valid, ratio), want)


def test_top_k_counts_like_the_reference_code() -> None:
    """ρN = 0.2 · 15 is 3.0000000000000004 in floating point: 3 tokens, not 4."""
    entropy = torch.arange(15.0).view(3, 5)
    valid = torch.ones(3, 5, dtype=torch.bool)
    assert int(top_k_tokens(entropy, valid, 0.2).sum()) == 3
    assert int(top_k_tokens(entropy, valid, 0.21).sum()) == 4
    assert int(top_k_tokens(entropy, valid, 1e-6).sum()) == 1


def trl_mask(entropies: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """TRL 1.16's own GRPOTrainer.get_high_entropy_mask, in one process."""
    from trl import GRPOTrainer

    accelerator = SimpleNamespace(pad_across_processes=lambda x, **_: x, gather=lambda x: x)
    trainer = SimpleNamespace(accelerator=accelerator)
    return GRPOTrainer.get_high_entropy_mask(trainer, entropies, mask, threshold)


@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantile_selection_equals_trl(ratio: float, seed: int) -> None:
    entropy, valid = random_entropy(6, 11, seed)
    entropy[0, :3] = entropy[1, 0]  # ties at the threshold are all kept, as TRL does
    ours = quantile_tokens(entropy, valid, ratio) if ratio > 0 else None
    theirs = trl_mask(entropy, valid.long(), 1 - ratio)
    if ours is None:  # ρ must be > 0 here; TRL's ρ = 0 keeps the highest token and its ties
        ours = quantile_tokens(entropy, valid, 1e-12)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("count", [1, 2, 7, 100, 1001])
def test_linear_quantile_equals_torch_quantile(count: int) -> None:
    values = torch.rand(count, generator=torch.Generator().manual_seed(count), dtype=torch.float64)
    for q in (0.0, 0.13, 0.5, 0.8, 1.0):
        assert abs(float(linear_quantile(values, q)) - float(torch.quantile(values, q))) < 1e-12


def batch_with_entropy(seed: int = 0) -> Batch:
    batch = rl_batch(num_groups=6, group_size=4, width=12, seed=seed, spread=0.3)
    return batch.replace(entropy=batch.entropy.detach())


def clipped_closed_form(batch: Batch, keep: torch.Tensor, denominator: str) -> torch.Tensor:
    """DAPO's token loss −min(ρÂ, clip(ρ)Â) on the kept tokens, divided by the kept tokens'
    count or by every valid token's (written from the formula, float64)."""
    rewards = batch.rewards.view(-1, 4)
    adv = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)
    adv = adv.reshape(-1, 1).expand_as(batch.mask)
    ratio = torch.exp(batch.logprobs - batch.old_logprobs)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - EPS_LOW, 1 + EPS_HIGH) * adv)
    kept = keep.to(batch.mask.dtype) * batch.mask
    count = kept.sum() if denominator == "selected" else batch.mask.sum()
    return -(surrogate * kept).sum() / count


def dapo_with(mask: HighEntropyTokens) -> UnifiedEstimator:
    clip = PPOClip(eps_low=EPS_LOW, eps_high=EPS_HIGH)
    estimator = UnifiedEstimator(
        mask=clip, reference="old", advantage="grpo", aggregation="token-mean"
    )
    return estimator.with_sample_mask(mask)


@pytest.mark.parametrize("denominator", ["selected", "all"])
@pytest.mark.parametrize("select", ["top_k", "quantile"])
@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_equals_the_closed_form(denominator: str, select: str, seed: int) -> None:
    batch = batch_with_entropy(seed)
    mask = HighEntropyTokens(ratio=0.3, select=select, denominator=denominator)  # type: ignore[arg-type]
    estimator = dapo_with(mask)
    out = estimator(batch)
    ours = torch.autograd.grad(out.loss, batch.logprobs)[0]
    keep = (top_k_tokens if select == "top_k" else quantile_tokens)(
        batch.entropy, batch.mask > 0, 0.3
    )
    want_loss = clipped_closed_form(batch, keep, denominator)
    want = torch.autograd.grad(want_loss, batch.logprobs)[0]
    assert rel_error(ours, want) < 1e-10
    assert abs(float(out.loss) - float(want_loss)) < 1e-10
    assert bool((ours[~keep] == 0).all()) and int(keep.sum()) > 3
    kept_frac = float(out.metrics["pg/entropy_kept"])
    assert abs(kept_frac - int(keep.sum()) / int((batch.mask > 0).sum())) < 1e-12


@pytest.mark.parametrize("denominator", ["selected", "all"])
def test_global_selection_ignores_the_micro_batch_split(denominator: str) -> None:
    batch = batch_with_entropy(3)
    estimator = dapo_with(HighEntropyTokens(ratio=0.25, denominator=denominator))  # type: ignore[arg-type]
    totals = [split_gradient(estimator, batch, parts) for parts in (1, 4, 8)]
    assert rel_error(totals[1], totals[0]) < 1e-12
    assert rel_error(totals[2], totals[0]) < 1e-12


def test_per_micro_batch_scope_selects_within_each_micro_batch() -> None:
    """Both references' behaviour, kept for parity runs: the selection follows the split."""
    batch = batch_with_entropy(3)
    mask = HighEntropyTokens(ratio=0.25, denominator="all", scope="per_microbatch")
    estimator = dapo_with(mask)
    kept = torch.zeros_like(batch.mask, dtype=torch.bool)
    for rows in torch.arange(batch.mask.shape[0]).tensor_split(4):
        kept[rows] = top_k_tokens(batch.entropy[rows], batch.mask[rows] > 0, 0.25)
    total = split_gradient(estimator, batch, 4)
    want = torch.autograd.grad(clipped_closed_form(batch, kept, "all"), batch.logprobs)[0]
    assert rel_error(total, want) < 1e-10


def test_the_option_reaches_every_term_on_rollouts() -> None:
    hpt = build_estimator(AlgorithmConfig(name="hpt", high_entropy={"ratio": 0.2}))
    masks = {t.name: [type(m).__name__ for m in getattr(t, "masks", ())] for t in hpt.terms}
    assert masks["rl"] == ["HighEntropyTokens"] and masks["sft"] == []  # SFT rows untouched


def test_sequence_level_terms_are_refused() -> None:
    estimator = UnifiedEstimator(reference="old", advantage="grpo", likelihood="sequence-mean")
    with pytest.raises(ValueError, match=r"selects single tokens.*'sequence-mean'"):
        estimator.with_sample_mask(HighEntropyTokens())


def true_entropy(model: Any, rows: Any, temperature: float) -> torch.Tensor:
    """[R, W] the entropy of the model's tempered next-token distribution at each position (0
    at column 0), from one plain forward."""
    with torch.no_grad():
        logits = model(input_ids=rows.input_ids, attention_mask=rows.attention).logits.double()
    logp = torch.log_softmax(logits[:, :-1] / temperature, -1)
    out = torch.zeros(rows.input_ids.shape, dtype=torch.float64)
    out[:, 1:] = -(logp.exp() * logp).sum(-1)
    return out


def entropy_checked_run(
    config: Path, temperature: float, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[float], list[dict[str, float]]]:
    """Train ``config``; before every mini-batch's update, the largest gap between the entropy
    its fields carry and the policy's true entropy at that moment."""
    import alignlib.trainer.update as update
    from alignlib.trainer.loop import Trainer

    trainer = Trainer(load_config(config))
    gaps: list[float] = []
    accumulate = update.accumulate

    def checking(kernel: Any, estimator: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        was_training = trainer.model.training
        trainer.model.eval()
        want = true_entropy(trainer.model, batch.rows, temperature)
        trainer.model.train(was_training)
        mask = batch.fields.mask > 0
        got = batch.fields.entropy.double()
        gaps.append(float((got[mask] - want[mask]).abs().max()))
        return accumulate(kernel, estimator, batch, *args, **kwargs)

    monkeypatch.setattr(update, "accumulate", checking)
    return gaps, trainer.train().history


@pytest.mark.usefixtures("one_thread")
def test_every_online_mini_batch_selects_by_the_policys_entropy_at_that_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_online import make_config

    config = make_config(
        tmp_path,
        algorithm={"name": "grpo", "high_entropy": {"ratio": 0.3}},
        rollout={"n": 4, "max_new_tokens": 6, "temperature": 0.9},
        online={"mini_batches": 2},
    )
    gaps, history = entropy_checked_run(config, 0.9, monkeypatch)
    assert len(gaps) == 4 and max(gaps) < 1e-4, gaps  # 2 steps × 2 mini-batches
    kept = [r["grpo/entropy_kept"] for r in history if "grpo/entropy_kept" in r]
    assert kept and all(0.25 < k < 0.45 for k in kept)


@pytest.mark.usefixtures("one_thread")
def test_offline_batches_select_by_the_policys_entropy_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_trainer import config_file, datasets

    config = config_file(tmp_path, datasets(tmp_path)["sft"], "sft", train={"max_steps": 3})
    text = config.read_text().replace("name: sft", "name: sft\n  high_entropy: {ratio: 0.5}")
    config.write_text(text)
    gaps, history = entropy_checked_run(config, 1.0, monkeypatch)
    assert len(gaps) == 3 and max(gaps) < 1e-4, gaps
    kept = [r["sft/entropy_kept"] for r in history if "sft/entropy_kept" in r]
    assert kept and all(0.45 < k < 0.6 for k in kept)
