"""The loopback interface every local service of ours binds (engine host, shim, Dagster in tests)."""

import socket
import urllib.request

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def answers(url: str, timeout: float = 2) -> bool:
    """True once something at `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False
