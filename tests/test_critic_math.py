"""A critic's math in float64, against forms written here independently: GAE by a per-row loop
over each row's own completion tokens (a tool's output inside an episode skipped), the KL
penalty in the reward, the whitening, the clipped value loss's value and gradient, and its
micro-batch invariance."""

from __future__ import annotations

import pytest
import torch
from batches import rel_error

from alignlib.estimator import GAE, Batch, UnifiedEstimator, ValueLoss
from alignlib.estimator.advantages import whiten
from alignlib.estimator.critic import gae, token_rewards

DTYPE = torch.float64


def critic_batch(seed: int = 0, rows: int = 6, width: int = 10) -> Batch:
    """Rows with ragged completions, one with a masked hole (an observation inside an
    episode) and one with no completion token at all."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(rows, width, dtype=DTYPE)
    for r in range(rows - 1):
        start = int(torch.randint(1, 4, (1,), generator=gen))
        end = int(torch.randint(start + 2, width + 1, (1,), generator=gen))
        mask[r, start:end] = 1
    mask[0, 1:8] = torch.tensor([1, 1, 0, 0, 1, 1, 1], dtype=DTYPE)  # a tool output at 3, 4
    logprobs = -torch.rand(rows, width, generator=gen, dtype=DTYPE) * 2
    return Batch(
        logprobs=logprobs.requires_grad_(),
        mask=mask,
        old_logprobs=logprobs.detach() + 0.3 * torch.randn(rows, width, generator=gen, dtype=DTYPE),
        ref_logprobs=-torch.rand(rows, width, generator=gen, dtype=DTYPE) * 2,
        values=torch.randn(rows, width, generator=gen, dtype=DTYPE),
        rewards=torch.randint(0, 2, (rows,), generator=gen).to(DTYPE),
    )


def loop_gae(b: Batch, gamma: float, lam: float, kl_coef: float) -> tuple[torch.Tensor, ...]:
    """Per row: walk its masked tokens from the last, δ = r + γV' − V, A = δ + γλA'."""
    advantages = torch.zeros_like(b.values)
    for row in range(b.num_rows):
        tokens = b.mask[row].nonzero().flatten().tolist()
        next_value = next_advantage = 0.0
        for i, t in enumerate(reversed(tokens)):
            kl = float(b.old_logprobs[row, t] - b.ref_logprobs[row, t])
            reward = (float(b.rewards[row]) if i == 0 else 0.0) - kl_coef * kl
            value = float(b.values[row, t])
            advantage = reward + gamma * next_value - value + gamma * lam * next_advantage
            advantages[row, t] = advantage
            next_value, next_advantage = value, advantage
    returns = (advantages + b.values) * b.mask
    valid = advantages[b.mask > 0]
    whitened = (advantages - valid.mean()) / torch.sqrt(valid.var(unbiased=True) + 1e-8)
    return advantages, returns, whitened * b.mask


@pytest.mark.parametrize(("gamma", "lam", "kl_coef"), [(1.0, 0.95, 0.0), (0.9, 0.7, 0.05)])
def test_gae_equals_the_per_row_recursion(gamma: float, lam: float, kl_coef: float) -> None:
    b = critic_batch()
    want_adv, want_returns, want_whitened = loop_gae(b, gamma, lam, kl_coef)
    kl = b.old_logprobs - b.ref_logprobs
    rewards = token_rewards(b.rewards, b.mask, kl, kl_coef)
    advantages, returns = gae(rewards, b.values, b.mask, gamma, lam)
    torch.testing.assert_close(advantages, want_adv, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(returns, want_returns, rtol=1e-12, atol=1e-12)
    whitened = whiten(advantages, b.mask, unbiased=True)  # verl's masked_whiten
    torch.testing.assert_close(whitened, want_whitened, rtol=1e-10, atol=1e-12)
    # The advantage component gives the same, on the rows it is asked for only.
    component = GAE(gamma=gamma, lam=lam, kl_coef=kl_coef)
    rows = torch.ones(b.num_rows, dtype=torch.bool)
    torch.testing.assert_close(component.returns(b, rows), want_returns, rtol=1e-12, atol=1e-12)
    got = component.compute(b, rows, None).values  # type: ignore[arg-type]
    torch.testing.assert_close(got, want_whitened, rtol=1e-10, atol=1e-12)
    assert bool(advantages[0, 3:5].eq(0).all()) and bool(advantages[-1].eq(0).all())
    # The reward's KL, as the estimator reports it: the token mean of log π_old − log π_ref.
    estimator = UnifiedEstimator(mask="ppo_clip", reference="old", advantage=component)
    metrics = estimator(b).metrics
    if kl_coef:
        want_kl = float((kl * b.mask).sum() / b.mask.sum())
        assert abs(float(metrics["pg/reward_kl"]) - want_kl) < 1e-12
    else:
        assert "pg/reward_kl" not in metrics


def test_gae_limits() -> None:
    """λ = γ = 1 without KL: every token's return is the row's reward (Monte Carlo); λ = 0:
    the one-step TD error r_t + V_{t+1} − V_t."""
    b = critic_batch(seed=1)
    rewards = token_rewards(b.rewards, b.mask)
    _, returns = gae(rewards, b.values, b.mask, 1.0, 1.0)
    torch.testing.assert_close(returns, b.rewards.unsqueeze(-1) * b.mask, rtol=0, atol=1e-12)
    advantages, _ = gae(rewards, b.values, b.mask, 1.0, 0.0)
    row = 1
    tokens = b.mask[row].nonzero().flatten()
    following = torch.cat([b.values[row, tokens[1:]], torch.zeros(1, dtype=DTYPE)])
    td = rewards[row, tokens] + following - b.values[row, tokens]
    torch.testing.assert_close(advantages[row, tokens], td, rtol=0, atol=1e-12)


def closed_value_loss(values, old, returns, mask, clip):  # type: ignore[no-untyped-def]
    clipped = torch.minimum(torch.maximum(values, old - clip), old + clip)
    per_token = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * (per_token * mask).sum() / mask.sum()


@pytest.mark.parametrize("clip", [0.2, None])
def test_the_clipped_value_loss_and_its_gradient(clip: float | None) -> None:
    b = critic_batch(seed=2)
    gen = torch.Generator().manual_seed(3)
    live = (b.values + 0.5 * torch.randn(b.values.shape, generator=gen, dtype=DTYPE)).detach()
    returns = b.values + torch.randn(b.values.shape, generator=gen, dtype=DTYPE)
    batch = Batch(
        logprobs=live.clone().requires_grad_(), mask=b.mask, values=b.values, returns=returns
    )
    critic = UnifiedEstimator(terms=[ValueLoss(clip=clip)])
    out = critic(batch)
    (ours,) = torch.autograd.grad(out.loss, batch.logprobs)
    theirs_input = live.clone().requires_grad_()
    bound = float("inf") if clip is None else clip
    want = closed_value_loss(theirs_input, b.values, returns, b.mask, bound)
    (theirs,) = torch.autograd.grad(want, theirs_input)
    assert abs(float(out.loss) - float(want)) < 1e-12
    assert rel_error(ours, theirs) < 1e-12
    clipfrac = float(out.metrics["critic/clipfrac"])
    assert (0 < clipfrac < 1) if clip is not None else clipfrac == 0
    assert "critic/explained_variance" in out.metrics


def test_the_value_loss_is_micro_batch_invariant() -> None:
    b = critic_batch(seed=4, rows=8)
    returns = b.values + 0.7
    live = (b.values - 0.1).detach()
    critic = UnifiedEstimator(terms=[ValueLoss()])

    def gradient(parts: int) -> torch.Tensor:
        leaf = live.clone().requires_grad_()
        batch = Batch(logprobs=leaf, mask=b.mask, values=b.values, returns=returns)
        prepared = critic.prepare(batch.replace(logprobs=leaf.detach()))
        total = 0.0
        for rows in torch.arange(b.num_rows).tensor_split(parts):
            micro = prepared.select(rows).replace(logprobs=leaf[rows])
            total = total + critic(micro).loss
        (grad,) = torch.autograd.grad(total, leaf)  # type: ignore[arg-type]
        return grad

    whole = gradient(1)
    assert whole.abs().sum() > 0
    for parts in (2, 3, 8):
        assert rel_error(gradient(parts), whole) < 1e-12


def test_bad_critic_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="lam"):
        GAE(lam=1.5)
    with pytest.raises(ValueError, match="kl_coef"):
        GAE(kl_coef=-0.1)
    with pytest.raises(ValueError, match="clip"):
        ValueLoss(clip=0.0)
