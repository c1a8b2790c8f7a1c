"""What the long-lived engine host is doing, shared through files by runs and its supervisor.

Runs come and go (each is its own process); the server outlives them. A run takes the lease while it
sends requests, so the supervisor never stops a server in use, and the lock makes "check the state,
then take the lease" and "check the lease, then stop" exclusive of each other.
"""

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from batch_pipeline.core.loopback import LOOPBACK
from batch_pipeline.core.privacy import secret_folder
from batch_pipeline.core.processes import ProcessIdentity
from batch_pipeline.core.storage import write_text_atomic
from batch_pipeline.generation.engine.host_auth import read_secret
from batch_pipeline.generation.engine.interface import EngineFailure


class EngineServerError(EngineFailure):
    """The server could not be started or stopped answering; a step retry starts a fresh one."""


class ServerState(BaseModel):
    status: Literal["starting", "ready", "stopping"]
    # Also the leader of the process group of the engine host and vLLM's EngineCore. A state file from
    # before a reboot or a killed supervisor names a pid that may now be anyone's: only a process
    # with this start time is ever signalled.
    supervisor: ProcessIdentity
    # Bound by the supervisor before the engine loads; 0 until then.
    port: int = 0
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


# Part of the served name, so a host left running by an older release is never fed this one's jobs.
HOST_PROTOCOL = "host4"


def served_name(fingerprint: str) -> str:
    return f"engine-{HOST_PROTOCOL}-{fingerprint}"


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

    def secret(self) -> str | None:
        """The running host's secret (generation.engine.host_auth), None before one was started."""
        return read_secret(self.folder)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        secret_folder(self.folder)  # it holds the host's secret: 0700 even when data is shared
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

    def clear(self, supervisor: ProcessIdentity) -> None:
        """Removes the state only if it still describes this supervisor's server."""
        current = self.read()
        if current is not None and current.supervisor == supervisor:
            self.state.unlink(missing_ok=True)

    def take_lease(self) -> None:
        write_text_atomic(self.lease, ProcessIdentity.of(os.getpid()).model_dump_json())

    def release_lease(self) -> None:
        """The lease file's removal time starts the idle clock; see `last_used`."""
        self.lease.unlink(missing_ok=True)
        self.folder.joinpath("server.last_used").touch()

    def lease_held(self) -> bool:
        """Held while the run that took it lives; a lease from before a crash or reboot is not."""
        try:
            return ProcessIdentity.model_validate_json(self.lease.read_text()).process() is not None
        except (FileNotFoundError, ValueError):
            return False

    def last_used(self, default: float) -> float:
        try:
            return max(default, self.folder.joinpath("server.last_used").stat().st_mtime)
        except FileNotFoundError:
            return default
