"""Bucketed weight broadcast in a standalone gloo group (the CPU twin of the NCCL path)."""

from __future__ import annotations

import datetime
import multiprocessing
import queue

import pytest
import torch
import torch.distributed as dist

from alignlib.rollout.weight_sync import (
    GroupAddress,
    TensorSpec,
    broadcast_weights,
    make_transport,
    open_group,
    plan_buckets,
)


def named_tensors() -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        ("embed.weight", torch.randn(7, 5, generator=gen)),
        ("norm.weight", torch.randn(5, generator=gen).to(torch.bfloat16)),
        ("layer.0.weight", torch.randn(3, 5, generator=gen)),
        ("layer.0.bias", torch.randn(3, generator=gen)),
        ("position_ids", torch.arange(11)),
        ("head.weight", torch.randn(5, 7, generator=gen)),
    ]


def specs_of(named: list[tuple[str, torch.Tensor]]) -> list[TensorSpec]:
    return [TensorSpec(name, tuple(t.shape), t.dtype) for name, t in named]


def test_buckets_keep_order_split_on_dtype_and_size():
    specs = specs_of(named_tensors())
    # 64 bytes: embed (140 B) alone, then layer.0.weight (60 B) + bias (12 B) do not fit together.
    plan = plan_buckets(specs, bucket_bytes=64)
    assert [i for bucket in plan for i in bucket] == list(range(len(specs)))
    assert plan == [[0], [1], [2], [3], [4], [5]]
    assert plan_buckets(specs, bucket_bytes=1 << 20) == [[0], [1], [2, 3], [4], [5]]
    for bucket in plan_buckets(specs, bucket_bytes=1 << 20):
        assert len({specs[i].dtype for i in bucket}) == 1


def _receiver(port: int, bucket_bytes: int, out: multiprocessing.Queue) -> None:
    address = GroupAddress("127.0.0.1", port, 2, "gloo", 60.0)
    group = open_group(address, rank=1)
    specs = specs_of(named_tensors())
    got = broadcast_weights(group, specs, None, torch.device("cpu"), bucket_bytes)
    out.put([(name, t.clone()) for name, t in got])


@pytest.mark.parametrize("bucket_bytes", [64, 1 << 20])
def test_broadcast_delivers_every_tensor_bit_exactly(bucket_bytes):
    store = dist.TCPStore(
        "127.0.0.1", 0, 2, True, timeout=datetime.timedelta(seconds=60), wait_for_workers=False
    )
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    receiver = context.Process(target=_receiver, args=(store.port, bucket_bytes, out))
    receiver.start()
    try:
        address = GroupAddress("127.0.0.1", store.port, 2, "gloo", 60.0)
        group = open_group(address, rank=0, store=store)
        named = named_tensors()
        sent = broadcast_weights(
            group, specs_of(named), [t for _, t in named], torch.device("cpu"), bucket_bytes
        )
        try:
            got = out.get(timeout=120)
        except queue.Empty:
            pytest.fail("the receiving process produced nothing within 120 s")
    finally:
        receiver.join(timeout=60)
    assert receiver.exitcode == 0
    assert [name for name, _ in got] == [name for name, _ in named]
    for (name, want), (_, have), (_, echo) in zip(named, got, sent, strict=True):
        assert have.dtype == want.dtype and have.shape == want.shape, name
        assert torch.equal(have, want) and torch.equal(echo, want), name


def test_unknown_transport_and_backend_name_the_valid_ones():
    with pytest.raises(ValueError, match="object_store, broadcast"):
        make_transport("nccl", "gloo", 1.0)
    with pytest.raises(ValueError, match="gloo or nccl"):
        make_transport("broadcast", "mpi", 1.0)
