"""HPT's gate and loss: routing by #correct, zero advantage for solved groups, and the RL
gradient −Σ Â·∇log p / L_max when ρ ≡ 1."""

from __future__ import annotations

import torch
from batches import hybrid_batch, rel_error

from alignlib import algorithms
from alignlib.algorithms.hpt import gate, route
from alignlib.estimator import Batch, Role


def test_gate_counts_correct_rollouts() -> None:
    assert gate(torch.tensor([0, 1, 2, 3, 8]), gamma=0).tolist() == [
        True,
        False,
        False,
        False,
        False,
    ]
    assert gate(torch.tensor([0, 1, 2, 3, 8]), gamma=2).tolist() == [True, True, True, False, False]


def test_route_gives_one_sft_row_per_gated_prompt() -> None:
    rewards = torch.tensor(
        [
            [0, 0, 0, 0],  # 0 correct -> SFT
            [1, 0, 0, 0],  # 1 correct -> SFT with gamma=1
            [1, 1, 0, 0],  # RL
            [1, 1, 1, 1],  # RL, fully solved
        ],
        dtype=torch.float64,
    )
    routing = route(rewards, gamma=1)
    assert routing.sft_prompts.tolist() == [True, True, False, False]
    for p in range(4):
        rows = routing.prompt_index == p
        demo = int((rows & (routing.roles == int(Role.DEMO))).sum())
        samples = int((rows & (routing.roles == int(Role.SAMPLE))).sum())
        assert (demo, samples) == ((1, 0) if p < 2 else (0, 4))
    assert routing.sample_index[routing.roles == int(Role.DEMO)].tolist() == [-1, -1]
    sample_rows = routing.roles == int(Role.SAMPLE)
    expected = rewards[routing.prompt_index[sample_rows], routing.sample_index[sample_rows]]
    assert torch.equal(routing.rewards[sample_rows], expected)


def routed_batch(rewards: torch.Tensor, gamma: int, width: int = 7, seed: int = 0) -> Batch:
    routing = route(rewards, gamma=gamma)
    gen = torch.Generator().manual_seed(seed)
    rows = routing.roles.numel()
    logprobs = -torch.rand(rows, width, generator=gen, dtype=torch.float64) * 3
    return Batch(
        logprobs=logprobs.requires_grad_(True),
        mask=torch.ones(rows, width),
        old_logprobs=logprobs.detach().clone(),  # first mini-batch: ρ ≡ 1
        entropy=torch.rand(rows, width, generator=gen, dtype=torch.float64),
        rewards=routing.rewards,
        group_ids=routing.prompt_index,
        roles=routing.roles,
    )


def test_fully_solved_group_has_zero_advantage() -> None:
    rewards = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0]], dtype=torch.float64)
    batch = routed_batch(rewards, gamma=0)
    prepared = algorithms.get("hpt").prepare(batch)
    adv = prepared.prepared["0.adv"]
    assert adv[:4].abs().max() == 0
    assert adv[4:].abs().max() > 0


def test_rl_gradient_with_unit_ratio() -> None:
    rewards = torch.tensor([[0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0]], dtype=torch.float64)
    batch = routed_batch(rewards, gamma=0)
    l_max = 64.0
    estimator = algorithms.get("hpt", sft_coef=0.0, entropy_coef=0.0, max_response_length=l_max)
    got = torch.autograd.grad(estimator(batch).loss, batch.logprobs)[0]
    # −Σ Â ∇log p / L_max, Â = R − group mean, on the RL rows only; SFT rows get nothing here.
    rl = batch.roles == int(Role.SAMPLE)
    adv = torch.zeros(batch.num_rows, dtype=torch.float64)
    for g in batch.group_ids[rl].unique():
        members = rl & (batch.group_ids == g)
        adv[members] = batch.rewards[members] - batch.rewards[members].mean()
    want = -(adv.unsqueeze(-1) * batch.mask) / l_max
    assert rel_error(got, want) < 1e-12
    assert got[~rl].abs().max() == 0


def test_sft_rows_get_token_mean_nll_gradient() -> None:
    rewards = torch.tensor([[0, 0, 0, 0], [1, 0, 1, 0]], dtype=torch.float64)
    batch = routed_batch(rewards, gamma=0)
    estimator = algorithms.get("hpt", sft_coef=0.3, entropy_coef=0.0)
    got = torch.autograd.grad(estimator(batch).loss, batch.logprobs)[0]
    demo = batch.roles == int(Role.DEMO)
    tokens = batch.mask[demo].sum()
    assert torch.allclose(got[demo], torch.full_like(got[demo], -0.3 / float(tokens)))


def test_paper_and_code_forms_differ_but_share_the_sft_term() -> None:
    batch = hybrid_batch()
    code = torch.autograd.grad(algorithms.get("hpt")(batch).loss, batch.logprobs)[0]
    paper = torch.autograd.grad(algorithms.get("hpt_paper")(batch).loss, batch.logprobs)[0]
    demo = batch.roles == int(Role.DEMO)
    assert rel_error(code[demo], paper[demo]) < 1e-12
    assert rel_error(code[~demo], paper[~demo]) > 1e-3
