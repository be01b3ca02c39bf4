"""Test-wide settings: no hub access, small thread pools, deterministic torch."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from 2 threads, and 2 threads on a busy 2-core machine spin
    up to 20x slower; one keeps these tests fast and their timing stable (and matches the one
    thread of each Ray worker where runs are compared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items) -> None:
    """`gpu` tests need CUDA: skipped (not failed) on a machine without it, like CI; with
    ALIGNLIB_TEST_ACCELERATOR=cpu they run on the CPU as a rehearsal (tests/device_cases.py)."""
    if torch.cuda.is_available() or os.environ.get("ALIGNLIB_TEST_ACCELERATOR") == "cpu":
        return
    import pytest

    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
