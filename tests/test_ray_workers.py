"""RayRolloutPool with two real local Ray workers holding tiny transformers engines, once per
weight transport (object store; gloo broadcast, the CPU twin of the NCCL path)."""

from __future__ import annotations

import functools
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import pytest
import ray
import torch

from alignlib.rollout.base import SamplingParams
from alignlib.rollout.ray_workers import RayRolloutPool, _shard_bounds
from alignlib.testing import build_tiny_model, build_tokenizer, tiny_engine

# Five prompts over two workers: uneven shards (3 + 2) exercise the reassembly.
PROMPTS = [
    "What is 2 + 3?",
    "Solve for x: 3x + 5 = 20.",
    "Hello!",
    "Compute the sum 1 + 2 + 3 + 4.",
    "The area of a rectangle is",
]
GREEDY = SamplingParams(n=2, temperature=0, max_new_tokens=8)
ENGINE = dict(init_std=0.2, max_batch_size=4)


@pytest.fixture(scope="module")
def ray_session():
    # One Ray session for the module: starting Ray costs seconds on a 2-core machine.
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def marker(tmp_path_factory):
    path = tmp_path_factory.mktemp("fault") / "crashed"
    path.touch()  # present = no crash; a test removes it to make one worker crash mid-call
    return path


@pytest.fixture(scope="module", params=["object_store", "broadcast"])
def pool(request, ray_session, marker):
    factory = functools.partial(tiny_engine, seed=0, crash_marker=str(marker), **ENGINE)
    pool = RayRolloutPool(factory, num_workers=2, timeout_s=180, weight_transport=request.param)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def state(tokenizer, seed: int) -> dict[str, torch.Tensor]:
    return build_tiny_model(tokenizer, init_std=0.2, seed=seed).state_dict()


def local_reference(tokenizer, seed: int, sampling: SamplingParams = GREEDY):
    return tiny_engine(seed=seed, **ENGINE).generate(PROMPTS, sampling)


def assert_same(got, want) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert [x.prompt_index for x in g] == [i] * len(w)
        assert [x.token_ids for x in g] == [x.token_ids for x in w]
        assert [x.finish_reason for x in g] == [x.finish_reason for x in w]
        for a, b in zip(g, w, strict=True):
            torch.testing.assert_close(
                torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0
            )


def test_shard_bounds_cover_everything_in_order():
    assert _shard_bounds(5, 2) == [(0, 3), (3, 5)]
    assert _shard_bounds(1, 3) == [(0, 1), (1, 1), (1, 1)]


def test_greedy_matches_single_local_engine_in_prompt_order(pool, tokenizer):
    pool.update_weights(state(tokenizer, 0))
    assert len(set(pool.worker_pids())) == 2, "two separate worker processes"
    assert_same(pool.generate(PROMPTS, GREEDY), local_reference(tokenizer, 0))


def test_seeded_sampling_is_reproducible_across_calls(pool):
    sampling = SamplingParams(n=2, max_new_tokens=8, seed=5)
    a = pool.generate(PROMPTS, sampling)
    b = pool.generate(PROMPTS, sampling)
    assert [[x.token_ids for x in g] for g in a] == [[x.token_ids for x in g] for g in b]


def test_update_weights_reaches_every_worker(pool, tokenizer):
    pool.update_weights(state(tokenizer, 1))
    want = local_reference(tokenizer, 1)
    assert [g[0].token_ids for g in want] != [g[0].token_ids for g in local_reference(tokenizer, 0)]
    # Both shards (prompts 0-2 on worker 0, 3-4 on worker 1) must show the new weights.
    assert_same(pool.generate(PROMPTS, GREEDY), want)


def test_killed_worker_is_restarted_with_current_weights(pool, tokenizer):
    pool.update_weights(state(tokenizer, 1))
    restarts, pids = pool.restarts, pool.worker_pids()
    pool.kill_worker(0)
    # The replacement must replay the weight update, or prompts 0-2 would come from seed 0.
    assert_same(pool.generate(PROMPTS, GREEDY), local_reference(tokenizer, 1))
    assert pool.restarts == restarts + 1
    new_pids = pool.worker_pids()
    assert new_pids[0] != pids[0] and new_pids[1] == pids[1]


def test_worker_dead_before_an_update_is_replaced_with_that_update(pool, tokenizer):
    pool.update_weights(state(tokenizer, 0))
    restarts = pool.restarts
    pool.kill_worker(1)
    pool.update_weights(state(tokenizer, 1))
    assert pool.restarts > restarts
    assert_same(pool.generate(PROMPTS, GREEDY), local_reference(tokenizer, 1))


def test_partial_update_changes_only_the_named_weights(pool, tokenizer):
    pool.update_weights(state(tokenizer, 0))
    new = state(tokenizer, 1)
    mixed = state(tokenizer, 0) | {k: v for k, v in new.items() if "layers.0." in k}
    pool.update_weights({k: v for k, v in new.items() if "layers.0." in k})
    engine = tiny_engine(seed=0, **ENGINE)
    engine.update_weights(mixed)
    assert_same(pool.generate(PROMPTS, GREEDY), engine.generate(PROMPTS, GREEDY))


def test_worker_crashing_mid_call_is_replaced_and_shard_rerun(pool, tokenizer, marker):
    pool.update_weights(state(tokenizer, 0))
    restarts = pool.restarts
    marker.unlink()  # the next generate call on one of the workers kills its process
    assert_same(pool.generate(PROMPTS, GREEDY), local_reference(tokenizer, 0))
    assert marker.exists(), "a worker must actually have crashed"
    assert pool.restarts == restarts + 1


def test_timeout_raises_and_leaves_pool_usable(pool, tokenizer):
    pool.update_weights(state(tokenizer, 0))
    restarts, timeout = pool.restarts, pool.timeout_s
    pool.timeout_s = 0.001
    try:
        with pytest.raises(TimeoutError, match="within 0 s"):
            pool.generate(PROMPTS, SamplingParams(max_new_tokens=64, seed=0))
    finally:
        pool.timeout_s = timeout
    assert pool.restarts == restarts + 2, "both hung workers are replaced"
    assert_same(pool.generate(PROMPTS, GREEDY), local_reference(tokenizer, 0))


def test_bad_arguments_and_failing_factory_raise_clear_errors(ray_session):
    with pytest.raises(ValueError, match="num_workers"):
        RayRolloutPool(tiny_engine, num_workers=0)
    broken = functools.partial(tiny_engine, hidden=30)  # build_tiny_model rejects hidden=30
    with pytest.raises(RuntimeError, match=r"failed to start.*divisible by 4"):
        RayRolloutPool(broken, num_workers=1, timeout_s=120)
