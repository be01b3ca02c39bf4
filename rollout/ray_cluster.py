"""Joining a Ray cluster, bounded in time and failing with one line naming the config key:
``ray.init(address=...)`` alone retries a dead address for many minutes."""

from __future__ import annotations

import os
import socket
import threading

import ray


def ensure_ray(
    address: str | None, timeout_s: float = 600.0, key: str = "rollout.ray_address"
) -> bool:
    """Connect to / start Ray (True: this call started a local session). Joining is bounded
    by ``timeout_s``: ``ray.init(address=...)`` alone retries a dead address for many minutes.
    ``key`` is the config key an error line names."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is not None:
        probe_ray_address(address, timeout_s, key)
        _bounded_init(address, timeout_s, key)
        return False
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False)
    return True


NO_ANSWER = "{} {}: no Ray cluster answered{}; start one with `ray start --head` or remove the key"


def _gcs_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) an address dials first (GCS 6379, ``ray://`` 10001); None for `auto`."""
    if address in ("auto", "local", ""):
        return None
    rest = address.removeprefix("ray://").split("/")[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return rest.strip("[]"), 10001 if address.startswith("ray://") else 6379
    return host.strip("[]"), int(port)


def probe_ray_address(address: str, timeout_s: float, key: str = "rollout.ray_address") -> None:
    """One line when nothing answers at ``address``: a TCP connect settles a refused port or
    an unknown host at once and bounds an unreachable one by ``timeout_s``, before any Ray."""
    endpoint = _gcs_endpoint(address)
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=timeout_s).close()
    except socket.gaierror:
        raise ConnectionError(NO_ANSWER.format(key, address, " (unknown host)")) from None
    except TimeoutError:
        raise TimeoutError(NO_ANSWER.format(key, address, f" within {timeout_s:g} s")) from None
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
        raise ConnectionError(NO_ANSWER.format(key, address, f" ({reason})")) from None


def _bounded_init(address: str, timeout_s: float, key: str) -> None:
    """``ray.init(address=...)`` in a daemon thread waited for ``timeout_s`` at most (a join
    that never returns is left behind: the caller exits with the error)."""
    outcome: dict[str, BaseException | None] = {}

    def join() -> None:
        try:
            ray.init(address=address)
            outcome["error"] = None
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=join, name="alignlib-ray-init", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "error" not in outcome:
        raise TimeoutError(NO_ANSWER.format(key, address, f" within {timeout_s:g} s"))
    error = outcome["error"]
    if error is not None:
        first = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise ConnectionError(NO_ANSWER.format(key, address, f" ({first})")) from error
