"""Rollout correction in the online trainer: every mode trains and logs its metrics, the
engine's log-probs are aligned with the trainer's (ratio ≈ 1 with the shared transformers
engine), min-p's, top-k's and top-p's kept mass log S_t is added (without it the ratio is ≈ S_t),
the old pass's log Σπ² (the optimal token baseline's) comes beside it, `rejection` forces the
no-grad old pass, and offline runs or a token mode on sequence units are
refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_online import make_config

import alignlib.trainer.online_passes as online_passes
from alignlib.cli import main
from alignlib.config import load_config
from alignlib.device import Placement
from alignlib.estimator import kept_log_mass
from alignlib.testing import build_tiny_model, build_tokenizer
from alignlib.trainer.head_hooks import kept_mass
from alignlib.trainer.loop import Trainer
from alignlib.trainer.online_passes import PassPlan, old_pass
from alignlib.trainer.online_update import RowTensors
from alignlib.trainer.step import LogprobKernel

pytestmark = pytest.mark.usefixtures("one_thread")


def corrected_run(tmp: Path, correction: dict[str, Any], **sections: Any) -> list[dict]:
    rollout = {"n": 4, "max_new_tokens": 6, **sections.pop("rollout", {})}
    online_section = {"rollout_correction": correction, **sections.pop("online", {})}
    config = make_config(tmp, rollout=rollout, online=online_section, **sections)
    return Trainer(load_config(config)).train().history


@pytest.mark.parametrize(
    ("correction", "hit"),
    [
        ({"mode": "tis", "cap": 2.0}, "rollout_truncated_frac"),
        ({"mode": "token_mask"}, "rollout_masked_frac"),
        ({"mode": "sequence_truncate"}, "rollout_truncated_frac"),
        ({"mode": "mis_sequence", "upper": 3.0}, "rollout_masked_frac"),
        ({"mode": "geometric_mask", "lower": 0.999, "upper": 1.001}, "rollout_masked_frac"),
        ({"mode": "token_mask", "rejection": True}, "rollout_rejected_frac"),
    ],
    ids=["tis", "token_mask", "sequence_truncate", "mis_sequence", "geometric", "rejection"],
)
def test_every_mode_trains_online_and_logs_its_metrics(
    tmp_path: Path, correction: dict[str, Any], hit: str
) -> None:
    history = corrected_run(tmp_path, correction, online={"mini_batches": 2})
    assert len(history) == 2
    for record in history:
        for key in (
            "rollout_ratio_mean",
            "rollout_ratio_max",
            "rollout_kl_k1",
            "rollout_kl_k3",
            hit,
        ):
            assert f"grpo/{key}" in record, sorted(record)
        assert all(torch.isfinite(torch.tensor(v)) for v in record.values())
        assert record["skipped_steps"] == 0


@pytest.mark.parametrize(
    ("top_k", "top_p", "min_p"),
    [(0, 1.0, 0.0), (0, 0.7, 0.0), (5, 1.0, 0.0), (8, 0.8, 0.0), (0, 1.0, 0.5), (0, 0.8, 0.3)],
)
def test_engine_logprobs_are_aligned_with_the_trainers(
    tmp_path: Path, top_k: int, top_p: float, min_p: float
) -> None:
    # The transformers engine generates with the training module itself (fp32, eval mode): the
    # only differences are kernel order (KV cache, left padding), so π_old/π_behav ≈ 1 on every
    # token. A one-position shift, a missing EOS log-prob, a row mixed up or log S_t left out
    # (top_p 0.7, top_k 5) moves these by far more than 1e-3.
    rollout = {"temperature": 1.0, "top_p": top_p, "top_k": top_k, "min_p": min_p}
    history = corrected_run(tmp_path, {"mode": "tis"}, rollout=rollout)
    for record in history:
        assert abs(record["grpo/rollout_ratio_mean"] - 1) < 1e-3
        assert abs(record["grpo/rollout_ratio_max"] - 1) < 1e-3
        assert abs(record["grpo/rollout_kl_k1"]) < 1e-4


@pytest.mark.parametrize("truncation", [{"top_p": 0.7}, {"top_k": 5}, {"min_p": 0.5}])
def test_without_the_kept_mass_the_ratio_is_biased_by_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, truncation: dict[str, Any]
) -> None:
    def no_mass(*args: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda logits: logits.new_zeros(logits.shape[:-1])

    monkeypatch.setattr(online_passes, "kept_mass", no_mass)
    history = corrected_run(tmp_path, {"mode": "tis"}, rollout=truncation)
    # r_t = S_t ≤ 1 on every token (TRL issue #6789): clearly below 1 on a random tiny model.
    assert all(r["grpo/rollout_ratio_mean"] < 0.99 for r in history)
    assert all(r["grpo/rollout_ratio_max"] <= 1 + 1e-5 for r in history)


def tiny_rows() -> tuple[RowTensors, LogprobKernel, torch.Tensor, torch.Tensor]:
    """(3 rows of a tiny model, one padded, the first 4 positions prompt; a kernel at T = 0.8;
    the model's logits at each position before the last; the completion mask)."""
    torch.manual_seed(0)
    model = build_tiny_model(build_tokenizer())
    ids = torch.randint(3, 50, (3, 9))
    attention = torch.ones_like(ids)
    attention[1, 7:] = 0
    mask = torch.zeros(3, 9)
    mask[:, 4:] = 1
    mask[1, 7:] = 0
    rows = RowTensors(ids, attention, mask, torch.zeros(3), torch.zeros(3), torch.zeros(3), mask)
    kernel = LogprobKernel(model, Placement.resolve("cpu", "fp32"), chunk_size=2, temperature=0.8)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    return rows, kernel, logits, mask


def test_kept_mass_comes_from_the_same_positions_as_the_old_logprobs() -> None:
    rows, kernel, logits, mask = tiny_rows()
    ids = rows.input_ids
    old, entropy, mass = old_pass(kernel, rows, 2, kept_mass(0.8, 0, 0.6))
    assert mass is not None
    want = torch.zeros(3, 9)
    want[:, 1:] = kept_log_mass(logits, temperature=0.8, top_p=0.6)
    torch.testing.assert_close(mass * mask, want * mask, atol=1e-5, rtol=0)
    tempered = torch.log_softmax(logits / 0.8, -1).gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(old[:, 1:] * mask[:, 1:], tempered * mask[:, 1:], atol=1e-5, rtol=0)
    probs = torch.softmax(logits / 0.8, -1)
    spread = -(probs * probs.log()).sum(-1)  # the tempered distribution's entropy
    torch.testing.assert_close(
        entropy[:, 1:] * mask[:, 1:], spread * mask[:, 1:], atol=1e-5, rtol=0
    )
    assert (want * mask).min() < -0.01  # top-p really dropped mass here


def test_the_old_pass_gives_log_sum_sq_of_the_tempered_logits_beside_log_s() -> None:
    """The optimal token baseline's log Σπ_old², alone or in a pass of its own beside log S_t
    (one head statistic per pass)."""
    rows, kernel, logits, mask = tiny_rows()
    want = torch.zeros(3, 9)
    want[:, 1:] = torch.logsumexp(2 * torch.log_softmax(logits / 0.8, -1), -1)
    for truncation in (None, (0, 0.6, 0.0)):
        plan = PassPlan(old=False, truncation=truncation, collision=True, engine=True)
        passes = plan.run(kernel, rows, 2, None)
        assert passes.old is not None and passes.old_collision is not None
        assert passes.engine is not None
        torch.testing.assert_close(passes.old_collision * mask, want * mask, atol=1e-5, rtol=0)


def test_rejection_forces_the_no_grad_old_pass(tmp_path: Path) -> None:
    def old_pass(correction: dict[str, Any] | None) -> bool:
        config = make_config(tmp_path, online={"rollout_correction": correction})
        trainer = Trainer(load_config(config))
        return trainer.source().passes.old

    assert not old_pass(None) and not old_pass({"mode": "token_mask"})  # on-policy: free
    assert old_pass({"mode": "token_mask", "rejection": True})


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"rollout": None, "data": {"path": "builtin:gsm8k_short_pairs", "limit": 4}},
            "online.rollout_correction corrects rollouts by the engine's log-probs, and this "
            "run samples none",
        ),
        (
            {"online": {"rollout_correction": {"mode": "tis", "rejection": True}}},
            "online.rollout_correction.rejection: needs a mask mode, not 'token_truncate'",
        ),
        (
            {"algorithm": {"name": "gspo", "params": {"level": "sequence"}}},
            "online.rollout_correction.mode: token_truncate weighs tokens, but algorithm gspo "
            "has one unit per sequence",
        ),
    ],
    ids=["offline", "rejection-truncate", "token-mode-sequence-units"],
)
def test_bad_corrections_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sections: dict[str, Any], message: str
) -> None:
    import yaml

    config = make_config(tmp_path, online={"rollout_correction": {"mode": "tis"}})
    cfg = yaml.safe_load(config.read_text())
    for key, value in sections.items():
        cfg[key] = value if value is None or key != "online" else {**cfg[key], **value}
    config.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
