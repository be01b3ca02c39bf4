"""Whether the Hugging Face Hub can be reached, and loading from its local cache alone when it
cannot: without a network the Hub client retries each file for about a minute before failing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's endpoint opens within ``timeout_s`` (False at
    once when HF_HUB_OFFLINE is set; True, untested, behind a proxy)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    proxies = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    if any(os.environ.get(name) for name in proxies):
        return True  # the client goes through the proxy; a direct connection says nothing
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout_s).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Within it, the Hub client (and transformers through it) reads only the local cache when
    ``offline``: passing local_files_only alone still lets transformers look for an adapter
    online."""
    if not offline:
        yield
        return
    from unittest import mock

    from huggingface_hub import constants

    with mock.patch.object(constants, "HF_HUB_OFFLINE", True):
        yield


def why_not_fetched(cached_only: bool) -> str:
    """Why a Hub name did not load: HF_HUB_OFFLINE, no network and no cached copy, or (the Hub
    answered) no such repository."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if cached_only:
        return "the Hub is unreachable from here and it is not in the local cache"
    return "no such repository?"
