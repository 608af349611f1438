"""Is the Hugging Face Hub reachable? Fail fast, with a useful message, when it is not."""
from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse


class HubUnavailableError(RuntimeError):
    """A Hub name was asked for, but the Hub cannot be reached from this machine."""


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hub answers a TCP connect; False offline or with HF_HUB_OFFLINE=1."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def require_hub(param: str, name: str, local_hint: str) -> None:
    """Raise HubUnavailableError naming the parameter unless the Hub is reachable."""
    if not hub_reachable():
        raise HubUnavailableError(
            f"{param}={name!r} is a Hugging Face Hub name, and the Hub is not reachable from "
            f"this machine (offline, or HF_HUB_OFFLINE=1). {local_hint}"
        )
