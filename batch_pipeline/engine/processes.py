"""Process-group control for engine processes, which outlive their parent unless the group goes.

vLLM 0.32's EngineCore survives a SIGTERM/SIGKILL of the process that started it (it is reparented
to init and keeps ~4.7 GB and a spinning worker), so engines are stopped by process group, and
orphans left by a killed run are reaped before the next engine loads.
"""

import os
import signal
import threading
import time

import psutil

from batch_pipeline.settings import DATA_DIR_ENV, data_dir

_ENGINE_PROCESS_TITLE = "VLLM::"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(group_members(pgid))


def group_members(pgid: int) -> list[psutil.Process]:
    """Zombies keep a group id valid but hold no memory; they do not count as members."""
    members = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def stop_group(pgid: int, grace_seconds: float) -> None:
    """SIGTERM, then SIGKILL after the grace period; returns once no member holds memory."""
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    while group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
        time.sleep(0.2)


def reap_orphaned_engines() -> list[int]:
    """Kills vLLM engine processes of this data folder whose parent died (reparented to init)."""
    ours = str(data_dir())
    reaped = []
    for process in psutil.process_iter(["pid", "ppid"]):
        try:
            if process.info["ppid"] != 1 or not _is_engine(process):
                continue
            if process.environ().get(DATA_DIR_ENV) and \
                    os.path.realpath(process.environ()[DATA_DIR_ENV]) == ours:
                process.kill()
                reaped.append(process.pid)
        except psutil.Error:
            continue
    return reaped


def stop_child_engines(grace_seconds: float) -> None:
    """A guard after an in-process engine's shutdown: the next engine must never load beside
    EngineCore or worker processes of this one that have not exited yet."""
    children = [p for p in psutil.Process().children(recursive=True) if _is_engine(p)]
    for process in children:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace_seconds)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_seconds)


def _is_engine(process: psutil.Process) -> bool:
    try:
        return " ".join(process.cmdline()).startswith(_ENGINE_PROCESS_TITLE)
    except psutil.Error:
        return False


def stop_signals() -> threading.Event:
    """Set by SIGINT or SIGTERM, so a main loop can shut its children down in order."""
    requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: requested.set())
    return requested
