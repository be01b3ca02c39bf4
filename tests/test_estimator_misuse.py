"""Python-API misuse of the estimator that used to give a wrong gradient or a baffling error."""

from __future__ import annotations

import pytest
import torch

from alignlib import algorithms
from alignlib.estimator import Batch, UnifiedEstimator
from alignlib.estimator.batch import BatchError


def grpo_batch(logprobs: torch.Tensor) -> Batch:
    mask = torch.ones(4, 5)
    mask[0, 3:] = 0
    return Batch(
        logprobs=logprobs,
        mask=mask,
        old_logprobs=logprobs.detach().clone(),
        rewards=torch.tensor([1.0, 0.0, 3.0, 0.0]),
        group_ids=torch.tensor([0, 0, 1, 1]),
    )


@pytest.mark.parametrize("name", ["grpo", "sft"])
def test_micro_batches_of_an_unprepared_mini_batch_are_refused(name: str) -> None:
    estimator = algorithms.get(name)
    base = torch.randn(4, 5, dtype=torch.float64)
    whole = base.clone().requires_grad_(True)
    estimator(grpo_batch(whole)).loss.backward()
    split = base.clone().requires_grad_(True)
    for micro in estimator.prepare(grpo_batch(split)).split(2):
        estimator(micro).loss.backward()
    torch.testing.assert_close(split.grad, whole.grad)  # the documented way: exact
    with pytest.raises(BatchError, match=r"estimator.prepare\(minibatch\).split\(k\)"):
        estimator(grpo_batch(base.clone().requires_grad_(True)).split(2)[0])
    one = grpo_batch(base.clone().requires_grad_(True)).split(1)[0]  # no split: a mini-batch
    assert torch.isfinite(estimator(one).loss)


def test_one_regularizer_may_be_named_without_a_list() -> None:
    single = UnifiedEstimator(advantage="grpo", reference="old", regularizers="entropy")
    listed = UnifiedEstimator(advantage="grpo", reference="old", regularizers=["entropy"])
    assert [t.name for t in single.terms] == [t.name for t in listed.terms] == ["pg", "entropy"]


@pytest.mark.parametrize("term", ["KLPenalty", "EntropyBonus", "ValueLoss"])
def test_regularizers_take_their_aggregation_by_name(term: str) -> None:
    """``KLPenalty(aggregation="seq-mean-token-mean")`` used to fail at the first batch with
    "'str' object has no attribute 'row_weights'"; a name now means its registered component,
    and a misspelt one is refused at construction with the valid names."""
    import alignlib.estimator as estimator_package
    from alignlib.estimator import SeqMeanTokenMean
    from alignlib.estimator.registry import RegistryError

    cls = getattr(estimator_package, term)
    assert cls(aggregation="seq-mean-token-mean") == cls(aggregation=SeqMeanTokenMean())
    with pytest.raises(RegistryError, match="valid: pair-mean, seq-mean-token-mean"):
        cls(aggregation="seq-mean")
