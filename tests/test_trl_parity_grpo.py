"""The GRPO family's loss and gradient equal TRL 1.16's own ``GRPOTrainer._compute_loss`` (every
`loss_type` it has: grpo, bnpo, dr_grpo, dapo, cispo, sapo, vespo, luspo; GSPO's sequence-level
ratio; the KL term plain and importance-weighted), and RLOO's ``RLOOTrainer._compute_loss``,
each called in float64 with a stand-in ``self`` whose model returns fixed per-token log-probs,
given the advantages TRL's formula gives (written out in closed_forms_frontier.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from batches import rl_batch
from closed_forms_frontier import advantages, rloo_advantages
from trl_stubs import trl_compute_loss

from alignlib import algorithms
from alignlib.estimator import Batch

trl = pytest.importorskip("trl")
if trl.__version__ != "1.16.0":
    pytest.skip(
        f"the harness targets trl 1.16.0's GRPOTrainer; found {trl.__version__}",
        allow_module_level=True,
    )
from trl import GRPOTrainer, RLOOTrainer  # noqa: E402

WIDTH, ROWS = 9, 16  # rl_batch's: 4 groups of 4


def trl_loss(b: Batch, adv: torch.Tensor, **settings: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL's loss and its gradient d loss / d log π for the batch's rows as completions."""
    options = {
        "loss_type": "grpo",
        "importance_sampling_level": "token",
        "epsilon_low": 0.2,
        "epsilon_high": 0.2,
        "beta": 0.0,
    } | settings
    args = SimpleNamespace(
        use_bias_correction_kl=options.pop("use_bias_correction_kl", False),
        delta=options.pop("delta", None),
        sapo_temperature_pos=1.0,
        sapo_temperature_neg=1.05,
        vespo_k_pos=2.0,
        vespo_lambda_pos=3.0,
        vespo_k_neg=3.0,
        vespo_lambda_neg=2.0,
        steps_per_generation=1,
    )
    inputs = {
        "advantages": adv,
        "old_per_token_logps": b.old_logprobs,
        "ref_per_token_logps": b.ref_logprobs,
        "num_items_in_batch": b.mask.sum(),
    }
    return trl_compute_loss(
        GRPOTrainer._compute_loss,
        b,
        inputs,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        get_gamma_weights=GRPOTrainer.get_gamma_weights,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        max_completion_length=WIDTH,
        _entropy_bonus_enabled=False,
        args=args,
        **options,
    )


# case -> (preset, its params, TRL's settings, whether the batch may hold all-equal groups)
CASES: dict[str, tuple[str, dict, dict]] = {
    "grpo": ("grpo", {}, {}),
    "grpo_clip_higher": ("grpo", {"eps_high": 0.28}, {"epsilon_high": 0.28}),
    "grpo_kl": ("grpo", {"kl_coef": 0.04}, {"beta": 0.04}),
    "grpo_kl_weighted": (
        "grpo",
        {"kl_coef": 0.04, "kl_importance_weighted": True},
        {"beta": 0.04, "use_bias_correction_kl": True},
    ),
    # TRL's two-sided clip (INTELLECT-2's δ) is PPO's dual clip c: ρ capped at δ for Â < 0.
    "grpo_dual_clip": ("grpo", {"clip_c": 1.5}, {"delta": 1.5}),
    "bnpo": ("grpo", {"aggregation": "token-mean"}, {"loss_type": "bnpo"}),
    # verl's Σ/L over the mini-batch; TRL's Σ/(B·L): the preset's docstring says pass B·L.
    "dr_grpo": ("dr_grpo", {"max_response_length": ROWS * WIDTH}, {"loss_type": "dr_grpo"}),
    "dapo": ("dapo", {"group_filter": False}, {"loss_type": "dapo", "epsilon_high": 0.28}),
    "cispo": ("cispo", {}, {"loss_type": "cispo", "epsilon_high": 1.2}),
    "sapo": ("sapo", {}, {"loss_type": "sapo"}),
    "vespo": ("vespo", {}, {"loss_type": "vespo"}),
    "gspo": (
        "gspo",
        {"eps_low": 0.05, "eps_high": 0.08},
        {"importance_sampling_level": "sequence", "epsilon_low": 0.05, "epsilon_high": 0.08},
    ),
    "gspo_sequence": (
        "gspo",
        {"eps_low": 0.05, "eps_high": 0.08, "level": "sequence"},
        {"importance_sampling_level": "sequence", "epsilon_low": 0.05, "epsilon_high": 0.08},
    ),
    "luspo": (
        "luspo",
        {"eps_low": 0.05, "eps_high": 0.08},
        {
            "loss_type": "luspo",
            "importance_sampling_level": "sequence",
            "epsilon_low": 0.05,
            "epsilon_high": 0.08,
        },
    ),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_and_gradient_equal_trls(case: str, seed: int) -> None:
    name, params, settings = CASES[case]
    b = rl_batch(spread=0.3 if "gspo" in case or case == "luspo" else 0.6, seed=seed)
    estimator = algorithms.get(name, **params)
    out = estimator(estimator.prepare(b))
    ours = torch.autograd.grad(out.loss, b.logprobs)[0]
    loss, theirs = trl_loss(b, advantages(b, std=name != "dr_grpo"), **settings)
    assert float(out.loss) == pytest.approx(float(loss), rel=1e-10, abs=1e-14)
    assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-14), (ours - theirs).abs().max()


def trl_rloo_loss(b: Batch, adv: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = {"advantages": adv, "old_logps": (b.old_logprobs * b.mask).sum(-1)}
    return trl_compute_loss(RLOOTrainer._compute_loss, b, inputs, epsilon_low=eps, epsilon_high=eps)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    ("params", "beta", "eps", "normalize"),
    [
        ({}, 0.05, 0.2, False),
        (
            {"kl_coef": 0.2, "eps_low": 0.1, "eps_high": 0.1, "normalize_advantages": True},
            0.2,
            0.1,
            True,
        ),
    ],
)
def test_rloo_equals_trls(
    seed: int, params: dict, beta: float, eps: float, normalize: bool
) -> None:
    b = rl_batch(spread=0.1, seed=seed)
    estimator = algorithms.get("rloo", **params)
    out = estimator(estimator.prepare(b))
    ours = torch.autograd.grad(out.loss, b.logprobs)[0]
    loss, theirs = trl_rloo_loss(b, rloo_advantages(b, beta, normalize), eps)
    assert float(out.loss) == pytest.approx(float(loss), rel=1e-10, abs=1e-14)
    assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-14), (ours - theirs).abs().max()
    assert ours.abs().sum() > 0
