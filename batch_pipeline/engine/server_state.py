"""What the long-lived vLLM server is doing, shared through files by runs and its supervisor.

Runs come and go (each is its own process); the server outlives them. A run takes the lease while it
sends requests, so the supervisor never stops a server in use, and the lock makes "check the state,
then take the lease" and "check the lease, then stop" exclusive of each other.
"""

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import BaseModel

from batch_pipeline.storage import write_text_atomic

LOOPBACK = "127.0.0.1"


class ServerState(BaseModel):
    status: Literal["starting", "ready", "stopping"]
    supervisor_pid: int  # also the process group of the supervisor, vLLM's API server and EngineCore
    port: int
    fingerprint: str
    started_by_model: str
    started_at: float
    load_seconds: float | None = None

    @property
    def served_name(self) -> str:
        return served_name(self.fingerprint)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def engine_fingerprint(engine_kwargs: dict[str, Any]) -> str:
    """Registry entries with the same engine arguments share a server: sampling travels per request."""
    return hashlib.sha256(json.dumps(engine_kwargs, sort_keys=True).encode()).hexdigest()[:12]


def served_name(fingerprint: str) -> str:
    return f"engine-{fingerprint}"


def idle_expired(now: float, last_used: float, lease_held: bool, idle_seconds: float) -> bool:
    return not lease_held and now - last_used >= idle_seconds


@dataclass(frozen=True)
class ServerFiles:
    folder: Path

    @property
    def state(self) -> Path:
        return self.folder / "server.json"

    @property
    def lease(self) -> Path:
        return self.folder / "server.lease"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "server.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read(self) -> ServerState | None:
        try:
            return ServerState.model_validate_json(self.state.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def write(self, state: ServerState) -> None:
        write_text_atomic(self.state, state.model_dump_json())

    def clear(self, supervisor_pid: int) -> None:
        """Removes the state only if it still describes this supervisor's server."""
        current = self.read()
        if current is not None and current.supervisor_pid == supervisor_pid:
            self.state.unlink(missing_ok=True)

    def take_lease(self) -> None:
        write_text_atomic(self.lease, str(os.getpid()))

    def release_lease(self) -> None:
        """The lease file's removal time starts the idle clock; see `last_used`."""
        self.lease.unlink(missing_ok=True)
        self.folder.joinpath("server.last_used").touch()

    def lease_held(self) -> bool:
        try:
            return psutil.pid_exists(int(self.lease.read_text()))
        except (FileNotFoundError, ValueError):
            return False

    def last_used(self, default: float) -> float:
        try:
            return max(default, self.folder.joinpath("server.last_used").stat().st_mtime)
        except FileNotFoundError:
            return default
