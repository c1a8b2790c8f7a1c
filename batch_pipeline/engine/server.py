"""Starting, reusing and stopping the long-lived vLLM server, from inside a run.

A run that finds the server up for its engine arguments reuses it (no load); otherwise it stops the
old one, waits until its processes (and memory) are gone, and starts its own. The GPU pool keeps
runs one at a time; the lock keeps a run and the supervisor's idle stop from crossing.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from batch_pipeline.engine.environment import configure_engine_environment, server_platform_kwargs
from batch_pipeline.engine.processes import group_alive, reap_orphaned_engines, stop_group
from batch_pipeline.engine.server_state import LOOPBACK, ServerFiles, ServerState, engine_fingerprint
from batch_pipeline.registry import ModelEntry, resolve_engine_kwargs

_STOP_GRACE_SECONDS = 45.0
_LOG_TAIL_LINES = 15


class EngineServerError(RuntimeError):
    """The server could not be started or stopped answering; a step retry starts a fresh one."""


def server_engine_kwargs(entry: ModelEntry, registry_dir: Path) -> dict:
    return server_platform_kwargs(resolve_engine_kwargs(entry, registry_dir))


def serves(state: ServerState) -> bool:
    """True only if something answers on the port and it serves exactly this engine."""
    try:
        with urllib.request.urlopen(f"{state.base_url}/v1/models", timeout=5) as response:
            served = {model["id"] for model in json.load(response)["data"]}
    except (OSError, ValueError, KeyError):
        return False
    return served == {state.served_name}


def ready_server_for(files: ServerFiles, fingerprint: str) -> ServerState | None:
    state = files.read()
    if state is None or state.status != "ready" or state.fingerprint != fingerprint:
        return None
    return state if group_alive(state.supervisor_pid) and serves(state) else None


def stop_server(files: ServerFiles) -> None:
    """Asks the supervisor to stop, then makes sure nothing of its process group is left."""
    state = files.read()
    if state is None or state.supervisor_pid <= 1:
        files.state.unlink(missing_ok=True)
        return
    try:
        os.kill(state.supervisor_pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + _STOP_GRACE_SECONDS
    while group_alive(state.supervisor_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop_group(state.supervisor_pid, grace_seconds=0)
    with files.locked():
        files.clear(state.supervisor_pid)


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _log_tail(files: ServerFiles) -> str:
    try:
        return "\n".join(files.log.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:])
    except FileNotFoundError:
        return "(no log)"


def _spawn(files: ServerFiles, model: str, engine_kwargs: dict, fingerprint: str,
           idle_seconds: float) -> subprocess.Popen:
    state = ServerState(status="starting", supervisor_pid=0, port=_free_loopback_port(),
                        fingerprint=fingerprint, started_by_model=model, started_at=time.time())
    with files.log.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "batch_pipeline.engine.server_supervisor", "--folder", str(files.folder),
             "--state", state.model_dump_json(), "--engine-kwargs", json.dumps(engine_kwargs),
             "--idle-seconds", str(idle_seconds)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    files.write(state.model_copy(update={"supervisor_pid": process.pid}))
    return process


def acquire_server(files: ServerFiles, model: str, entry: ModelEntry, registry_dir: Path,
                   idle_seconds: float, start_timeout: float = 900) -> tuple[ServerState, bool]:
    """The server for this entry's engine and whether it was already running; takes the lease,
    which the caller gives back with `files.release_lease()`."""
    configure_engine_environment()
    engine_kwargs = server_engine_kwargs(entry, registry_dir)
    fingerprint = engine_fingerprint(engine_kwargs)
    with files.locked():
        files.take_lease()
        if (state := ready_server_for(files, fingerprint)) is not None:
            return state, True
    stop_server(files)
    reap_orphaned_engines()
    with files.locked():
        process = _spawn(files, model, engine_kwargs, fingerprint, idle_seconds)
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        state = files.read()
        if state is not None and state.supervisor_pid == process.pid and state.status == "ready":
            if not serves(state):
                break
            return state, False
        if process.poll() is not None:
            raise EngineServerError(f"the vLLM server for {model} exited during start-up "
                                    f"(code {process.returncode}); {files.log}:\n{_log_tail(files)}")
        time.sleep(0.5)
    stop_server(files)
    raise EngineServerError(f"the vLLM server for {model} was not serving within {start_timeout:.0f}s; "
                            f"{files.log}:\n{_log_tail(files)}")
