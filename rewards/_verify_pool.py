"""A small, persistent pool of math-verify worker processes with a hard per-task time limit.

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot stop one running task, so a sympy
computation that never ends (``10^{10^{10}}``) would hold a worker forever. Here every worker is
a plain subprocess behind two pipes; a task past its deadline gets its worker killed, and a new
one is started in the background. Everything is driven from the calling thread with
``multiprocessing.connection.wait``, so it works from any thread, and threads may share the pool.

Workers are started with ``python -m alignlib.rewards._verify_worker`` rather than through
``multiprocessing``: spawn and forkserver re-run the caller's ``__main__`` in the child, which
breaks every script without an ``if __name__ == "__main__"`` guard. POSIX only.
"""

from __future__ import annotations

import atexit
import math
import os
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from pathlib import Path

import alignlib

__all__ = ["VerifyPool", "configure_pool", "get_pool", "shutdown_pool"]

# Worker start-up (importing sympy, ~1 s) is not billed to a task's time limit, but is bounded.
STARTUP_TIMEOUT_S = 120.0

Pairs = list[tuple[str, str]]
_PACKAGE_ROOT = Path(alignlib.__file__).resolve().parents[1]
"""The folder holding the `alignlib` package this module was imported from (a normal install:
site-packages; an editable one: the checkout, whose import hook maps `alignlib.rewards`)."""


class _Worker:
    def __init__(self) -> None:
        # The child must import the same alignlib as this process, even from a source tree.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "alignlib.rewards._verify_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            # `python -m` puts its working directory first on sys.path. Started from a checkout of
            # alignlib (which has an `alignlib/` folder without `rewards/`), a normal install's
            # child would import that folder and fail; the installed package's parent is safe.
            cwd=_PACKAGE_ROOT,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.send_conn = Connection(os.dup(self.proc.stdin.fileno()), readable=False)
        self.conn = Connection(os.dup(self.proc.stdout.fileno()), writable=False)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.ready = False
        self.task: int | None = None
        self.deadline = time.monotonic() + STARTUP_TIMEOUT_S

    def _close(self) -> None:
        self.send_conn.close()
        self.conn.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=5)
        self._close()

    def stop(self) -> None:
        try:
            self.send_conn.send(None)
            self.proc.wait(timeout=1)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._close()


class VerifyPool:
    """Up to ``max_workers`` worker processes, started lazily and reused across calls."""

    def __init__(self, max_workers: int) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.max_workers = max_workers
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._alive = 0  # idle + checked out + being started

    def _acquire(self, want: int, *, block: bool = True) -> list[_Worker]:
        # Block only while holding no worker (for the first one): a caller that waited for more
        # while holding some could deadlock against another caller holding the rest.
        with self._cond:
            while block and not self._idle and self._alive >= self.max_workers:
                self._cond.wait()
            got = []
            n_new = 0
            while len(got) + n_new < want and (self._idle or self._alive < self.max_workers):
                if self._idle:
                    got.append(self._idle.pop())
                else:
                    self._alive += 1
                    n_new += 1
        for _ in range(n_new):
            got.append(self._spawn_counted())
        return got

    def _spawn_counted(self) -> _Worker:
        try:
            return _Worker()
        except BaseException:
            self._discard(None)
            raise

    def _discard(self, worker: _Worker | None) -> None:
        if worker is not None:
            worker.kill()
        with self._cond:
            self._alive -= 1
            self._cond.notify()

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            self._idle.append(worker)
            self._cond.notify()

    def run(self, tasks: list[Pairs], timeout_s: float) -> list[bool]:
        """For each task, whether any of its (gold, pred) pairs verifies within ``timeout_s``."""
        results = [False] * len(tasks)
        if not tasks:
            return results
        pending = deque(range(len(tasks)))
        workers = self._acquire(len(tasks))
        try:
            for w in workers:
                if w.ready:
                    self._assign(w, pending, tasks, timeout_s)
            while pending or any(w.task is not None for w in workers):
                if not workers:  # all were dropped and no replacement was free: wait for one
                    workers = self._acquire(1)
                timeout = min(60.0, max(0.0, min(w.deadline for w in workers) - time.monotonic()))
                by_conn = {w.conn: w for w in workers if w.task is not None or not w.ready}
                for conn in wait(list(by_conn), timeout=timeout):
                    w = by_conn[conn]
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):  # crashed (e.g. out of memory): task stays False
                        self._drop(w, workers, pending)
                        continue
                    if msg == "ready":
                        w.ready = True
                    elif isinstance(msg, tuple) and msg[0] == w.task:
                        results[msg[0]] = bool(msg[1])
                        w.task = None
                    self._assign(w, pending, tasks, timeout_s)
                now = time.monotonic()
                for w in [w for w in workers if w.deadline <= now]:
                    self._drop(w, workers, pending)  # past its time limit: task stays False
        except BaseException:
            for w in workers:  # a worker in an unknown state is not worth reusing
                self._discard(w)
            raise
        for w in workers:
            self._release(w)
        return results

    def _drop(self, w: _Worker, workers: list[_Worker], pending: deque[int]) -> None:
        workers.remove(w)
        self._discard(w)
        if not w.ready:
            raise RuntimeError(_START_FAILED)
        if pending:  # a replacement starts while the others keep working
            workers += self._acquire(1, block=False)

    @staticmethod
    def _assign(w: _Worker, pending: deque[int], tasks: list[Pairs], timeout_s: float) -> None:
        if w.task is not None or not w.ready:
            return
        if not pending:
            w.deadline = float("inf")
            return
        task = pending.popleft()
        try:
            # The worker's own alarm is a backstop; normally it is killed here at the deadline.
            w.send_conn.send((task, tasks[task], math.ceil(timeout_s) + 5))
        except OSError:  # died while idle: give the task back, let the expiry check reap it
            pending.appendleft(task)
            w.deadline = 0.0
            return
        w.task = task
        w.deadline = time.monotonic() + timeout_s

    def shutdown(self) -> None:
        """Stop idle workers (workers checked out by a running call stop when it ends)."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._alive -= len(idle)
        for w in idle:
            w.stop()


_START_FAILED = (
    "the math-verify worker process failed to start; run `python -c 'import math_verify'` "
    "to see why"
)
_POOL: VerifyPool | None = None
_POOL_PID = -1
_POOL_LOCK = threading.Lock()
_MAX_WORKERS: int | None = None


def configure_pool(max_workers: int) -> None:
    """Set how many worker processes grading may use (default: min(4, CPU count))."""
    global _MAX_WORKERS
    if not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers must be a positive int, got {max_workers!r}")
    shutdown_pool()
    _MAX_WORKERS = max_workers


def get_pool() -> VerifyPool:
    """The process-wide pool, created on first use (and again in a forked child)."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or os.getpid() != _POOL_PID:
            _POOL = VerifyPool(_MAX_WORKERS or min(4, os.cpu_count() or 1))
            _POOL_PID = os.getpid()
        return _POOL


def shutdown_pool() -> None:
    """Stop the pool's workers; the next grading call starts a new pool."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None and os.getpid() == _POOL_PID:
        pool.shutdown()


atexit.register(shutdown_pool)
