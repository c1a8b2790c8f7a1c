"""Keeps one engine host (batch_pipeline.generation.engine.host) alive between runs; stops it after
an idle timeout.

Started detached by the first run that needs the model, as the leader of its own process group,
so stopping the group stops the host and vLLM's EngineCore with it.
"""

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from batch_pipeline.core.loopback import LOOPBACK
from batch_pipeline.core.privacy import apply_umask
from batch_pipeline.core.processes import (
    ENGINE_HOST_MODULE,
    ProcessIdentity,
    group_members,
    kill_until_gone,
    stop_signals,
)
from batch_pipeline.core.settings import Settings
from batch_pipeline.generation.engine.host_auth import new_secret, proves_identity
from batch_pipeline.generation.engine.server_state import ServerFiles, ServerState, idle_expired, served_name
from batch_pipeline.generation.engine.spec import EngineSpec

_POLL_SECONDS = 1.0
_STOP_GRACE_SECONDS = 30.0


def host_command(spec: EngineSpec, fingerprint: str, fd: int, secret_folder: Path) -> list[str]:
    return [sys.executable, "-m", ENGINE_HOST_MODULE, "--fd", str(fd), "--secret-folder", str(secret_folder),
            "--served-name", served_name(fingerprint), "--spec", spec.model_dump_json()]


def listen_on_loopback() -> socket.socket:
    """Bound and listening before the engine loads: the port is ours from the moment it is advertised
    (no window in which another process could take it), and stays ours while this supervisor lives."""
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind((LOOPBACK, 0))
    listening.listen(128)
    return listening


# vLLM 0.32 can hang instead of exiting when its engine fails to start (seen with a failed torch
# compile); the log is the only sign.
_STARTUP_FAILURE = "EngineCore failed to start"


def _startup_failed(files: ServerFiles) -> bool:
    try:
        return _STARTUP_FAILURE in files.log.read_text(errors="replace")
    except FileNotFoundError:
        return False


def _stop_own_group(server: subprocess.Popen, kill_seconds: float) -> None:
    """vLLM shuts down cleanly on SIGTERM; whatever of the group is left after the grace is killed,
    and StopTimeout names what still lives `kill_seconds` later."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
    me, group = os.getpid(), os.getpgid(0)
    try:
        kill_until_gone(lambda: [p for p in group_members(group) if p.pid != me], kill_seconds,
                        f"stopping the engine host's process group {group}")
    finally:
        server.poll()


def supervise(files: ServerFiles, state: ServerState, spec: EngineSpec, idle_seconds: float,
              stop_seconds: float) -> int:
    stop_requested = stop_signals()
    secret = new_secret(files.folder)
    listening = listen_on_loopback()
    state = state.model_copy(update={"port": listening.getsockname()[1]})
    with files.locked():
        files.write(state)
    server = subprocess.Popen(host_command(spec, state.fingerprint, listening.fileno(), files.folder),
                              pass_fds=(listening.fileno(),))
    exit_code = 0
    try:
        while not _host_proves_identity(state, secret):
            if stop_requested.is_set():
                return 0
            if server.poll() is not None or _startup_failed(files):
                print(f"engine host failed to start (exit code {server.poll()})", flush=True)
                return 1
            time.sleep(_POLL_SECONDS)
        ready_at = time.time()
        state = state.model_copy(update={"status": "ready", "load_seconds": round(ready_at - state.started_at, 1)})
        with files.locked():
            files.write(state)
        print(f"engine host ready on {state.base_url} after {state.load_seconds}s", flush=True)
        while not stop_requested.is_set():
            if server.poll() is not None:
                print(f"engine host exited with code {server.returncode}", flush=True)
                exit_code = 1
                break
            with files.locked():
                if idle_expired(time.time(), files.last_used(ready_at), files.lease_held(), idle_seconds):
                    files.write(state.model_copy(update={"status": "stopping"}))
                    print(f"idle for {idle_seconds:.0f}s: stopping", flush=True)
                    break
            time.sleep(_POLL_SECONDS)
        return exit_code
    finally:
        try:
            _stop_own_group(server, stop_seconds)
        finally:  # even with processes left behind: they are named in this log, and reaped by the slot's next run
            with files.locked():
                files.clear(state.supervisor)
            listening.close()


def _host_proves_identity(state: ServerState, secret: str) -> bool:
    """Until the engine has loaded, nothing accepts on the socket: a short wait, then poll again."""
    with httpx.Client(base_url=state.base_url) as client:
        return proves_identity(client, secret, state.served_name, timeout=_POLL_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folder", required=True, type=Path)
    parser.add_argument("--state", required=True, help="the ServerState this supervisor starts from, as JSON")
    parser.add_argument("--spec", required=True, help="the EngineSpec to serve, as JSON")
    parser.add_argument("--idle-seconds", required=True, type=float)
    args = parser.parse_args()
    settings = Settings()
    apply_umask(settings.share_with_group)
    state = ServerState.model_validate_json(args.state).model_copy(
        update={"supervisor": ProcessIdentity.of(os.getpid())})
    sys.exit(supervise(ServerFiles(args.folder), state, EngineSpec.model_validate_json(args.spec), args.idle_seconds,
                       settings.engine_stop_seconds))


if __name__ == "__main__":
    main()
