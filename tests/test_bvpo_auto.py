"""BVPO with `alpha: auto`: the online α* equals the paper's closed form computed here, in
float64 and from scratch, from the same gradients; each step's gradient is exactly
α·g_t + (1 − α)·g_e; a run with `alpha: auto` trains; a bad α is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from alignlib import algorithms
from alignlib.algorithms.bvpo_auto import GradientMoments
from alignlib.cli import main
from alignlib.config import load_config
from alignlib.config.schema import LoRAConfig
from alignlib.data.collate import collate, encode_example
from alignlib.estimator import Batch, Role
from alignlib.testing import build_tiny_model, build_tokenizer
from alignlib.trainer.logprobs import token_logprobs
from alignlib.trainer.loop import Trainer
from alignlib.trainer.model import apply_lora

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------- independent reference: the paper's α* from K paired samples, in numpy -----------


def reference_alpha(g_t: np.ndarray, g_e: np.ndarray, decay: float) -> tuple[float, ...]:
    """(A, B, C, α*) from [K, D] samples; sample k weighs decay^(K−1−k) (1 = plain averages).

    Target = E g_t (b_t = 0); tr Σ with reliability weights; ‖b_e‖² = ‖μ_e − μ_t‖² less the
    variance of that difference of weighted means. α* = (B − C)/(A + B − 2C) in [0, 1]."""
    k = g_t.shape[0]
    w = decay ** np.arange(k - 1, -1, -1, dtype=np.float64)
    total, total_sq = w.sum(), (w**2).sum()
    mu_t, mu_e = w @ g_t / total, w @ g_e / total
    dev_t, dev_e = g_t - mu_t, g_e - mu_e
    dof = total - total_sq / total
    var_t = (w * (dev_t**2).sum(1)).sum() / dof
    var_e = (w * (dev_e**2).sum(1)).sum() / dof
    cov = (w * (dev_t * dev_e).sum(1)).sum() / dof
    gap = mu_e - mu_t
    bias_sq = max(gap @ gap - total_sq / total**2 * (var_t + var_e - 2 * cov), 0.0)
    a, b, c = var_t, bias_sq + var_e, cov
    alpha = min(max((b - c) / (a + b - 2 * c), 0.0), 1.0)
    return a, b, c, alpha


@pytest.mark.parametrize("decay", [1.0, 0.7])
def test_online_moments_equal_the_closed_form(decay: float) -> None:
    rng = np.random.default_rng(0)
    k, shapes = 9, [(3, 4), (5,)]
    size = sum(int(np.prod(s)) for s in shapes)
    # The empty-trace estimator: correlated with the trace one, biased, less noisy.
    g_t = rng.normal(size=(k, size)) * 2.0 + 1.0
    g_e = 0.3 * g_t + 0.4 * rng.normal(size=(k, size)) + 2.0
    params = [nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in shapes]

    def as_gradient(flat: np.ndarray) -> dict[nn.Parameter, Tensor]:
        pieces = np.split(flat, np.cumsum([p.numel() for p in params])[:-1])
        pairs = zip(params, pieces, strict=True)
        return {p: torch.from_numpy(x.reshape(p.shape)) for p, x in pairs}

    moments = GradientMoments(decay)
    for i in range(k):
        moments.observe(as_gradient(g_t[i]), as_gradient(g_e[i]))
    *abc, alpha = reference_alpha(g_t, g_e, decay)
    assert moments.abc() == pytest.approx(abc, rel=1e-10)
    assert moments.alpha() == pytest.approx(alpha, rel=1e-10)
    assert 0.0 < alpha < 1.0  # an interior optimum: the test can see a wrong formula


# ---------- the estimator in a training loop: α per mini-batch, gradient = the mixture -------


class ToyPolicy(nn.Module):
    """log π of fixed tokens under logits = features @ W: enough graph for real gradients."""

    def __init__(self, hidden: int = 6, vocab: int = 7) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(hidden, vocab, generator=generator).double())

    def forward(self, features: Tensor, tokens: Tensor) -> Tensor:
        logits = features @ self.weight
        return F.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def bvpo_batch(policy: ToyPolicy, seed: int) -> tuple[Batch, Tensor]:
    """2 trace pairs and 2 empty-trace pairs; trace rows are longer and noisier."""
    g = torch.Generator().manual_seed(seed)
    rows, width = 8, 5
    features = torch.randn(rows, width, 6, generator=g, dtype=torch.float64)
    features[:4] *= 2.0  # trace rows (pairs 0, 1)
    tokens = torch.randint(0, 7, (rows, width), generator=g)
    mask = torch.ones(rows, width, dtype=torch.float64)
    mask[4:, 2:] = 0  # empty-trace responses are short
    logprobs = policy(features, tokens)
    batch = Batch(
        logprobs=logprobs,
        mask=mask,
        ref_logprobs=logprobs.detach() + 0.1 * torch.randn(rows, width, generator=g).double(),
        roles=torch.tensor([int(Role.CHOSEN), int(Role.REJECTED)] * 4),
        pair_ids=torch.arange(4).repeat_interleave(2),
        trace=torch.tensor([True] * 4 + [False] * 4),
    )
    return batch, features


def side_gradient(policy: ToyPolicy, batch: Batch, trace: bool, beta: float) -> Tensor:
    """∇ of the mean DPO loss over the trace (or empty-trace) pairs, written out here."""
    seq = (batch.logprobs * batch.mask).sum(-1)
    ref = (batch.ref_logprobs * batch.mask).sum(-1)
    chosen = batch.roles == int(Role.CHOSEN)
    rejected = batch.roles == int(Role.REJECTED)
    side = batch.trace == trace
    margin = (seq - ref)[chosen & side] - (seq - ref)[rejected & side]
    loss = -F.logsigmoid(beta * margin).mean()
    (grad,) = torch.autograd.grad(loss, policy.weight, retain_graph=True)
    return grad


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_auto_alpha_steps_with_the_online_optimum(micro_batches: int) -> None:
    beta, decay, steps = 0.1, 0.8, 6
    policy = ToyPolicy()
    estimator = algorithms.get("bvpo", alpha="auto", beta=beta, auto_decay=decay)
    seen_t, seen_e = [], []
    for step in range(steps):
        batch, _ = bvpo_batch(policy, seed=step)
        g_t = side_gradient(policy, batch, True, beta)
        g_e = side_gradient(policy, batch, False, beta)
        prepared = estimator.prepare(batch)
        expected = (
            0.5 if step < 2 else reference_alpha(np.stack(seen_t), np.stack(seen_e), decay)[3]
        )
        alpha = float(prepared.prepared_metrics["bvpo/alpha"])
        assert alpha == pytest.approx(expected, rel=1e-10)
        policy.weight.grad = None
        for micro in prepared.split(micro_batches):
            estimator(micro).loss.backward()
        mixture = alpha * g_t + (1 - alpha) * g_e
        torch.testing.assert_close(policy.weight.grad, mixture, rtol=1e-10, atol=1e-14)
        seen_t.append(g_t.flatten().numpy())
        seen_e.append(g_e.flatten().numpy())
        with torch.no_grad():  # a small step, so the gradients change between mini-batches
            policy.weight -= 0.5 * policy.weight.grad


def transformer_batches(lora: bool) -> tuple[nn.Module, list]:
    """A float64 tiny Llama (LoRA: frozen head, the fused log-prob path) and 3 mini-batch
    builders, each 2 trace + 2 empty-trace pairs of the end-to-end data below."""
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, hidden=32, layers=2, dtype=torch.float64)
    if lora:
        model = apply_lora(model, LoRAConfig(enabled=True, r=4, alpha=8, dropout=0.0))
        for name, p in model.named_parameters():  # B = 0 at init: make A's gradient nonzero
            if "lora_B" in name:
                p.data.normal_(0, 0.1)
    rows = bvpo_rows()
    examples = [encode_example(tokenizer, r, "bvpo", index=i) for i, r in enumerate(rows)]
    col = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        ref, _ = token_logprobs(model, col.input_ids, col.attention_mask)
    ref = ref + 0.05 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(0)).double()

    def builder(pairs: list[int]):
        index = torch.cat([(col.pair_ids == i).nonzero().flatten() for i in pairs])

        def build() -> Batch:
            logprobs, _ = token_logprobs(model, col.input_ids[index], col.attention_mask[index])
            return Batch(
                logprobs=logprobs,
                mask=col.completion_mask[index],
                ref_logprobs=ref[index],
                roles=col.roles[index],
                pair_ids=col.pair_ids[index],
                trace=col.trace[index],
            )

        return build

    # rows alternate trace / empty per problem: pairs 0, 2, 4, 6 carry a trace
    return model, [builder(p) for p in ([0, 1, 2, 3], [4, 5, 6, 7], [0, 3, 4, 7])]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_auto_gradient_on_a_transformer(lora: bool) -> None:
    """Through a real decoder and the trainer's log-prob code: the step's gradient is
    α·g_t + (1 − α)·g_e, with g_t and g_e from fresh forwards of the fixed-α presets."""
    model, builders = transformer_batches(lora)
    params = [p for p in model.parameters() if p.requires_grad]
    estimator = algorithms.get("bvpo", alpha="auto", auto_decay=1.0)
    alphas = []
    for build in builders:
        sides = []
        for fixed in (1.0, 0.0):
            loss = algorithms.get("bvpo", alpha=fixed)(build()).loss
            sides.append(torch.autograd.grad(loss, params))
        prepared = estimator.prepare(build())
        alpha = float(prepared.prepared_metrics["bvpo/alpha"])
        model.zero_grad(set_to_none=True)
        estimator(prepared).loss.backward()
        for p, g_t, g_e in zip(params, *sides, strict=True):
            torch.testing.assert_close(
                p.grad, alpha * g_t + (1 - alpha) * g_e, rtol=1e-9, atol=1e-12
            )
        alphas.append(alpha)
    assert alphas[:2] == [0.5, 0.5] and alphas[2] != 0.5


def test_fixed_alpha_is_unchanged() -> None:
    """A number keeps the plain two-term mixture (no gradient measurement, no extra terms)."""
    estimator = algorithms.get("bvpo", alpha=0.25)
    assert [t.name for t in estimator.terms] == ["trace", "empty"]
    assert [t.coef for t in estimator.terms] == [0.25, 0.75]


# ---------- end to end: a YAML run with alpha: auto, and a bad alpha ----------------------


def bvpo_rows() -> list[dict[str, object]]:
    """A trace pair and an empty-trace pair per problem (in that order)."""
    return [
        {
            "prompt": f"What is {a} + {b}?",
            "chosen": f"<think>\n{a} plus {b} is {a + b}\n</think>\n\n\\boxed{{{a + b}}}"
            if trace
            else f"<think>\n\n</think>\n\n\\boxed{{{a + b}}}",
            "rejected": f"<think>\n{a} plus {b} is {a + b + 1}\n</think>\n\n\\boxed{{{a + b + 1}}}"
            if trace
            else f"<think>\n\n</think>\n\n\\boxed{{{a + b + 1}}}",
            "trace": trace,
        }
        for a, b in [(2, 3), (4, 4), (7, 1), (6, 3)]
        for trace in (True, False)
    ]


def write_run(tmp: Path, alpha: object, steps: int = 5) -> Path:
    data = tmp / "bvpo.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in bvpo_rows()))
    cfg = {
        "output_dir": str(tmp / "run"),
        "model": {"name_or_path": "tiny:llama"},
        "data": {"path": str(data), "shuffle": False},
        "algorithm": {"name": "bvpo", "params": {"alpha": alpha}},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "schedule": "constant"},
        "train": {"batch_size": 8, "micro_batch_size": 4, "max_steps": steps},
        "logging": {"progress": False, "tensorboard": False, "plot": False},
    }
    path = tmp / "bvpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_run_with_alpha_auto_trains(tmp_path: Path) -> None:
    result = Trainer(load_config(write_run(tmp_path, "auto"))).train()
    history = result.history
    alphas = [h["bvpo/alpha"] for h in history]
    assert alphas[:2] == [0.5, 0.5]  # the paper's α until two mini-batches are measured
    assert [h["bvpo/samples"] for h in history] == list(range(len(history)))
    assert all(0.0 <= a <= 1.0 for a in alphas) and len(set(alphas[2:])) > 1
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["trace/margin"] > 0 and history[-1]["empty/margin"] > 0


def test_a_bad_alpha_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["train", str(write_run(tmp_path, "autoo"))])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("alignlib: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "algorithm.params.alpha: must be a number in [0, 1] or 'auto', got 'autoo'" in err
