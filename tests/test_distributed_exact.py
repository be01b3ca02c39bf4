"""Data-parallel exactness in float64: two gloo ranks, each preparing the whole mini-batch and
running its share of the micro-batches, then summing gradients, give the one-process gradient
of every step kind (DPO, SFT, TPO with its reference pass, KTO, AOT, a reward model; GRPO, HPT,
Clip-Cov, GRPO+KL, OPD with their old-log-prob passes, also split between the ranks; and the
offline kinds with FSDP2's sharded parameters) to 1e-12 — so any end-to-end difference in fp32
is reduction-order rounding, not a different method."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from device_cases import CASES, OFFLINE, run_case

from alignlib.trainer.world import World


def _rank(rank: int, port: int, cases: list[str], folder: str, sharded: bool) -> None:
    """Every case in one process group: the spawn and imports are paid once per strategy."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        world = World(rank, 2, sharded)
        for case in cases:
            tmp = Path(folder) / case / f"rank{rank}"
            tmp.mkdir(parents=True, exist_ok=True)
            metrics, grads, _ = run_case(tmp, case, "cpu", world=world, float64=True)
            torch.save({"metrics": metrics, "grads": grads}, Path(folder) / case / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Callable[[bool], Path]:
    """The folder of every case's per-rank results under one strategy (DDP: all cases; FSDP2:
    the offline ones), run once per module by two spawned gloo ranks."""
    runs: dict[bool, Path | BaseException] = {}

    def run(sharded: bool) -> Path:
        if sharded not in runs:
            folder = tmp_path_factory.mktemp("fsdp2" if sharded else "ddp")
            cases = list(OFFLINE) if sharded else list(CASES)
            try:
                args = (_free_port(), cases, str(folder), sharded)
                mp.start_processes(_rank, args=args, nprocs=2, start_method="spawn")
                runs[sharded] = folder
            except Exception as exc:  # every case of the strategy reports it, none reruns it
                runs[sharded] = exc
        result = runs[sharded]
        if isinstance(result, BaseException):
            raise result
        return result

    return run


@pytest.mark.parametrize(
    ("case", "sharded"),
    [*((case, False) for case in CASES), *((case, True) for case in OFFLINE)],
    ids=lambda v: ("fsdp2" if v else "ddp") if isinstance(v, bool) else v,
)
def test_two_ranks_give_the_one_process_gradient_in_float64(
    tmp_path: Path, case: str, sharded: bool, two_ranks: Callable[[bool], Path]
) -> None:
    torch.set_num_threads(1)
    (tmp_path / "one").mkdir()
    metrics, grads, _ = run_case(tmp_path / "one", case, "cpu", float64=True)
    folder = two_ranks(sharded) / case
    for rank in range(2):
        got = torch.load(folder / f"rank{rank}.pt")
        assert got["grads"].keys() == grads.keys()
        for name, want in grads.items():
            assert want.dtype == torch.float64
            error = (got["grads"][name] - want).norm() / want.norm().clamp_min(1e-300)
            assert error < 1e-12, f"{case} rank {rank} {name}: {error:.2e}"
        for key, value in metrics.items():
            assert got["metrics"][key] == pytest.approx(value, rel=1e-10, abs=1e-12), key
