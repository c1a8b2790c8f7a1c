"""Starting, reusing and stopping the long-lived engine host, from inside a run.

A run that finds the server up for its engine reuses it (no load); otherwise it stops the old one,
waits until its processes (and memory) are gone, and starts its own. Each accelerator slot has its
own server and files (generation.engine.slots), and the slot lock keeps runs one at a time in it;
the files' lock keeps a run and the supervisor's idle stop from crossing.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

from batch_pipeline.core.loopback import direct_client
from batch_pipeline.core.processes import (
    ProcessIdentity,
    group_alive,
    reap_orphaned_engines,
    signal_process,
    stop_group,
)
from batch_pipeline.generation.engine.host_auth import proves_identity
from batch_pipeline.generation.engine.server_state import EngineServerError, ServerFiles, ServerState
from batch_pipeline.generation.engine.spec import EngineSpec

_STOP_GRACE_SECONDS = 45.0
_LOG_TAIL_LINES = 15


def serves(state: ServerState, secret: str | None) -> bool:
    """True only if what answers on the port proves it holds the host's secret and serves exactly
    this engine."""
    if secret is None:
        return False
    with direct_client(base_url=state.base_url) as client:
        return proves_identity(client, secret, state.served_name)


def ready_server_for(files: ServerFiles, fingerprint: str) -> ServerState | None:
    state = files.read()
    if state is None or state.status != "ready" or state.fingerprint != fingerprint:
        return None
    return state if state.supervisor.process() is not None and serves(state, files.secret()) else None


def starting_server_for(files: ServerFiles, fingerprint: str) -> ServerState | None:
    """A server for this engine that is still loading (started ahead of its first run by `make run`)."""
    state = files.read()
    if state is None or state.status != "starting" or state.fingerprint != fingerprint:
        return None
    return state if state.supervisor.process() is not None else None


def stop_server(files: ServerFiles) -> None:
    """Asks the supervisor to stop, then makes sure nothing of its process group is left; a state
    naming a process that is no longer the supervisor is only cleared."""
    state = files.read()
    if state is None:
        return
    if signal_process(state.supervisor, signal.SIGTERM):
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        while group_alive(state.supervisor) and time.monotonic() < deadline:
            time.sleep(0.2)
    if not stop_group(state.supervisor, grace_seconds=0):
        raise EngineServerError(f"the engine host's processes (group {state.supervisor.pid}) would not exit")
    with files.locked():
        files.clear(state.supervisor)


def _log_tail(files: ServerFiles) -> str:
    try:
        return "\n".join(files.log.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:])
    except FileNotFoundError:
        return "(no log)"


def _spawn(files: ServerFiles, spec: EngineSpec, idle_seconds: float) -> tuple[subprocess.Popen, ServerState]:
    state = ServerState(status="starting", supervisor=ProcessIdentity(pid=0, started_at=0),
                        fingerprint=spec.fingerprint, started_by_model=spec.model, started_at=time.time())
    with files.log.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "batch_pipeline.generation.engine.server_supervisor", "--folder",
             str(files.folder), "--state", state.model_dump_json(), "--spec",
             spec.model_dump_json(), "--idle-seconds", str(idle_seconds)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    state = state.model_copy(update={"supervisor": ProcessIdentity.of(process.pid)
                                     or ProcessIdentity(pid=process.pid, started_at=0)})
    files.write(state)
    return process, state


def _exited(process: subprocess.Popen | None, started: ServerState) -> bool:
    """A supervisor this run started is polled (its exit leaves a zombie that still "exists");
    one started by someone else is looked up."""
    if process is not None:
        return process.poll() is not None
    return started.supervisor.process() is None


def start_server(files: ServerFiles, spec: EngineSpec, idle_seconds: float, data_dir: Path, slot: int = 0) -> bool:
    """Starts loading this engine in the slot whose `files` these are, ahead of any run, unless a
    server is already up or starting there; a run that needs it waits for the load instead of
    starting its own."""
    state = files.read()
    if state is not None and state.supervisor.process() is not None:
        return False
    stop_server(files)  # what is left of a dead supervisor's group
    reap_orphaned_engines(data_dir, slot)
    with files.locked():
        state = files.read()
        if state is not None and state.supervisor.process() is not None:
            return False
        _spawn(files, spec, idle_seconds)
    return True


def acquire_server(files: ServerFiles, spec: EngineSpec, idle_seconds: float, data_dir: Path,
                   start_timeout: float = 900, slot: int = 0) -> tuple[ServerState, bool]:
    """The server for this engine in the slot whose `files` these are, and whether it was already
    running; takes the lease, which the caller gives back with `files.release_lease()`."""
    with files.locked():
        files.take_lease()
        if (state := ready_server_for(files, spec.fingerprint)) is not None:
            return state, True
        started = starting_server_for(files, spec.fingerprint)
    process = None
    if started is None:
        stop_server(files)
        reap_orphaned_engines(data_dir, slot)
        with files.locked():
            process, started = _spawn(files, spec, idle_seconds)
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        state = files.read()
        if state is not None and state.supervisor == started.supervisor and state.status == "ready":
            if not serves(state, files.secret()):
                break
            return state, False
        if _exited(process, started):
            raise EngineServerError(f"the engine host for {spec.model} exited during start-up; "
                                    f"{files.log}:\n{_log_tail(files)}")
        time.sleep(0.5)
    stop_server(files)
    raise EngineServerError(f"the engine host for {spec.model} was not serving within {start_timeout:.0f}s; "
                            f"{files.log}:\n{_log_tail(files)}")
