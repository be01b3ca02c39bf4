"""Soak (opt-in, `pytest -m slow tests/test_soak.py`): 200 online GRPO steps on a tiny model with
two Ray rollout workers, one of them killed at random about every 20 steps. The run must finish
every step, replace every killed worker, and hold its memory flat: resident memory of the trainer
and of all its Ray processes is sampled throughout and written, with the kill steps, to
`$ALIGNLIB_SOAK_OUT/soak_rss.json` and `soak_rss.png` (default: the test's temporary folder)."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_online import make_config

import alignlib.trainer.online as online
from alignlib.config import load_config
from alignlib.trainer.loop import Trainer

pytestmark = pytest.mark.slow
STEPS, KILL_EVERY = 200, 20


class MemorySampler(threading.Thread):
    """RSS of this process and of every other process on the machine that Ray started."""

    def __init__(self, period_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.period_s, self.samples, self.stop = period_s, [], threading.Event()
        self.began = time.monotonic()

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop.is_set():
            ray_rss = 0
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                if proc.pid != me.pid and ("ray::" in cmd or "/ray/" in cmd):
                    ray_rss += proc.info["memory_info"].rss if proc.info["memory_info"] else 0
            mib = 2**20
            self.samples.append(
                (time.monotonic() - self.began, me.memory_info().rss / mib, ray_rss / mib)
            )
            self.stop.wait(self.period_s)


def test_two_hundred_steps_with_a_worker_killed_every_twenty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = Path(os.environ.get("ALIGNLIB_SOAK_OUT", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    pools: list[Any] = []
    steps: list[tuple[float, int]] = []  # (time, step) after each weight sync
    kills: list[int] = []
    rng = random.Random(0)
    build = online.build_engine

    def spying_build(*args: Any, **kwargs: Any) -> Any:
        handle = build(*args, **kwargs)
        pools.append(handle.engine)
        sync = handle.sync

        def sync_then_maybe_kill(model: Any) -> None:
            sync(model)
            step = len(steps) + 1
            steps.append((time.monotonic() - sampler.began, step))
            if rng.random() < 1 / KILL_EVERY and step < STEPS:
                handle.engine.kill_worker(rng.randrange(handle.engine.num_workers))
                kills.append(step)

        handle.sync = sync_then_maybe_kill  # type: ignore[method-assign]
        return handle

    monkeypatch.setattr(online, "build_engine", spying_build)
    config = make_config(
        tmp_path,
        train={"max_steps": STEPS, "seed": 0},
        rollout={"n": 4, "max_new_tokens": 6, "num_workers": 2, "timeout_s": 120},
        checkpoint={"every": 50, "keep_last": 1},
    )
    sampler = MemorySampler()
    sampler.start()
    try:
        result = Trainer(load_config(config)).train()
    finally:
        sampler.stop.set()
        sampler.join()
    record = {"steps": steps, "kills": kills, "rss_mib": sampler.samples}
    record["restarts"] = pools[0].restarts if pools else 0
    (out / "soak_rss.json").write_text(json.dumps(record))
    plot(record, out / "soak_rss.png")

    assert result.steps == STEPS and len(result.history) >= STEPS
    assert len(kills) >= 5, kills
    assert record["restarts"] >= len(kills)  # every killed worker was replaced
    main = [m for _, m, _ in sampler.samples]
    quarter = len(main) // 4
    early, late = max(main[quarter : 2 * quarter]), max(main[3 * quarter :])
    assert late < early * 1.15 + 100, f"trainer RSS grew: {early:.0f} → {late:.0f} MiB"


def plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [t for t, _, _ in record["rss_mib"]]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(times, [m for _, m, _ in record["rss_mib"]], label="trainer process")
    ax.plot(times, [r for _, _, r in record["rss_mib"]], label="Ray processes (all)")
    step_time = dict((s, t) for t, s in record["steps"])
    for i, step in enumerate(record["kills"]):
        ax.axvline(
            step_time[step], color="red", alpha=0.3, label="worker killed" if not i else None
        )
    ax.set(
        xlabel="seconds",
        ylabel="resident memory (MiB)",
        title="Soak: 200 GRPO steps, 2 Ray workers",
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
