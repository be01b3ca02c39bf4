"""Data-parallel exactness in float64: two gloo ranks, each preparing the whole mini-batch and
running its share of the micro-batches, then summing gradients, give the one-process gradient
of every step kind (DPO, SFT, TPO with its reference pass, KTO, AOT, a reward model; GRPO, HPT,
Clip-Cov, GRPO+KL, OPD with their old-log-prob passes, also split between the ranks; and the
offline kinds with FSDP2's sharded parameters) to 1e-12 — so any end-to-end difference in fp32
is reduction-order rounding, not a different method."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from device_cases import CASES, OFFLINE, run_case

from alignlib.trainer.world import World


def _rank(rank: int, port: int, case: str, folder: str, sharded: bool) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        tmp = Path(folder) / f"rank{rank}"
        tmp.mkdir(parents=True, exist_ok=True)
        world = World(rank, 2, sharded)
        metrics, grads, _ = run_case(tmp, case, "cpu", world=world, float64=True)
        torch.save({"metrics": metrics, "grads": grads}, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("case", "sharded"),
    [*((case, False) for case in CASES), *((case, True) for case in OFFLINE)],
    ids=lambda v: ("fsdp2" if v else "ddp") if isinstance(v, bool) else v,
)
def test_two_ranks_give_the_one_process_gradient_in_float64(
    tmp_path: Path, case: str, sharded: bool
) -> None:
    torch.set_num_threads(1)
    (tmp_path / "one").mkdir()
    metrics, grads, _ = run_case(tmp_path / "one", case, "cpu", float64=True)
    mp.start_processes(
        _rank, args=(_free_port(), case, str(tmp_path), sharded), nprocs=2, start_method="spawn"
    )
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["grads"].keys() == grads.keys()
        for name, want in grads.items():
            assert want.dtype == torch.float64
            error = (got["grads"][name] - want).norm() / want.norm().clamp_min(1e-300)
            assert error < 1e-12, f"{case} rank {rank} {name}: {error:.2e}"
        for key, value in metrics.items():
            assert got["metrics"][key] == pytest.approx(value, rel=1e-10, abs=1e-12), key
