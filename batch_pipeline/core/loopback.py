"""The loopback interface every local service of ours binds (engine host, shim, Dagster in tests).

Calls to it never go through a proxy: `HTTP_PROXY` on a proxied machine would send them to the proxy,
which cannot reach this machine's loopback.
"""

import socket
import urllib.request
from typing import IO
from urllib.parse import urlsplit

import httpx

LOOPBACK = "127.0.0.1"
_LOOPBACK_HOSTS = {LOOPBACK, "localhost", "::1", "[::1]"}
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in _LOOPBACK_HOSTS


def urlopen(url: str | urllib.request.Request, timeout: float) -> IO[bytes]:
    """`urllib.request.urlopen` without any proxy (for our own loopback services)."""
    return _DIRECT.open(url, timeout=timeout)


def direct_client(**kwargs) -> httpx.Client:
    """An httpx client that ignores proxy variables (and the rest of the environment's HTTP settings)."""
    return httpx.Client(trust_env=False, **kwargs)


def answers(url: str, timeout: float = 2) -> bool:
    """True once something at `url` answers 200."""
    try:
        with urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False
