"""The one place that signals processes: only ones whose identity matches what was recorded.

A pid alone is not an identity: after a reboot or a crash, a pid in a state file can belong to any
process. A recorded process is the pid plus its start time; a process group is ours while its
leader is either that same process or gone (the kernel does not hand out a group id still in use).

vLLM 0.32's EngineCore survives a SIGTERM/SIGKILL of the process that started it (it is reparented
to init and keeps ~4.7 GB and a spinning worker), so engines are stopped by process group, and
orphans of this data folder and slot are reaped before the next engine loads in that slot (another
slot's engine, orphaned or not, is left to its own slot's next run).
"""

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from pydantic import BaseModel

# Process start times are rounded differently by the kernel's clock ticks and by psutil.
_START_TIME_SLACK = 0.05
# vLLM titles its engine processes `VLLM::EngineCore` etc.; the long-lived engine host is known by its
# module (run as `python -m`).
ENGINE_HOST_MODULE = "batch_pipeline.generation.engine.host"
_ENGINE_MARKERS = ("VLLM::", ENGINE_HOST_MODULE)
# Set in the environment of every engine process: the data folder whose runs started it.
ENGINE_OWNER_ENV = "BATCH_PIPELINE_ENGINE_OWNER"
# ... and the accelerator slot (core.slots) it runs in; an engine from before slots has none: slot 0.
ENGINE_SLOT_ENV = "BATCH_PIPELINE_ENGINE_SLOT"


class ProcessIdentity(BaseModel):
    pid: int
    started_at: float

    @classmethod
    def of(cls, pid: int) -> "ProcessIdentity | None":
        try:
            return cls(pid=pid, started_at=psutil.Process(pid).create_time())
        except psutil.Error:
            return None

    def matches(self, process: psutil.Process) -> bool:
        try:
            return abs(process.create_time() - self.started_at) <= _START_TIME_SLACK
        except psutil.Error:
            return False

    def process(self) -> psutil.Process | None:
        """The live process this identity names, or None if it is gone, a zombie, or its pid was reused."""
        try:
            process = psutil.Process(self.pid)
            return process if self.matches(process) and process.status() != psutil.STATUS_ZOMBIE else None
        except psutil.Error:
            return None


def signal_process(identity: ProcessIdentity, signum: int) -> bool:
    """Signals the process only if it is still the one recorded; True if a signal was sent."""
    process = identity.process()
    if process is None:
        return False
    try:
        process.send_signal(signum)  # psutil re-checks the identity right before signalling
    except psutil.Error:
        return False
    return True


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


def _group_is_ours(leader: ProcessIdentity) -> bool:
    if leader.pid <= 1:
        return False
    try:
        process = psutil.Process(leader.pid)
        # A reused pid is harmless unless its new owner leads a group of its own under that id.
        return leader.matches(process) or os.getpgid(leader.pid) != leader.pid
    except (psutil.NoSuchProcess, ProcessLookupError):
        return True


def group_alive(leader: ProcessIdentity) -> bool:
    return _group_is_ours(leader) and bool(group_members(leader.pid))


def _signal_members(leader: ProcessIdentity, signum: int) -> None:
    for process in group_members(leader.pid):
        try:
            process.send_signal(signum)
        except psutil.Error:
            continue


def stop_group(leader: ProcessIdentity, grace_seconds: float, kill_seconds: float = 30.0) -> bool:
    """SIGTERM to the leader's group, SIGKILL after the grace period; True once no member holds
    memory (within `kill_seconds` more), False if it will not die. A group id that now belongs to
    someone else is left alone: nothing of ours is left in it."""
    if not _group_is_ours(leader):
        return True
    _signal_members(leader, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while group_alive(leader) and time.monotonic() < deadline:
        time.sleep(0.2)
    deadline = time.monotonic() + kill_seconds
    while group_alive(leader):
        if time.monotonic() >= deadline:
            return False
        _signal_members(leader, signal.SIGKILL)
        time.sleep(0.2)
    return True


class StopTimeout(RuntimeError):
    """Something told to stop was still there at the deadline."""


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} ({process.name()})"
    except psutil.Error:
        return str(process.pid)


def kill_until_gone(members: Callable[[], list[psutil.Process]], seconds: float, what: str) -> None:
    """SIGKILL to `members()` until none is left; StopTimeout naming those left after `seconds` (a
    process stuck in the kernel ignores even SIGKILL, and may still hold accelerator memory)."""
    deadline = time.monotonic() + seconds
    while leftovers := members():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StopTimeout(f"{what}: processes {', '.join(map(_describe, leftovers))} were still alive "
                              f"{seconds:.0f}s after being killed (BATCH_PIPELINE_ENGINE_STOP_SECONDS)")
        for process in leftovers:
            try:
                process.kill()
            except psutil.Error:
                continue
        psutil.wait_procs(leftovers, timeout=min(5.0, remaining))


def _is_engine(process: psutil.Process) -> bool:
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return command.startswith(_ENGINE_MARKERS[0]) or _ENGINE_MARKERS[1] in command


def _serves_slot(process: psutil.Process, data_dir: Path, slot: int) -> bool:
    try:
        environment = process.environ()
    except psutil.Error:
        return False
    named = environment.get(ENGINE_OWNER_ENV)
    return (bool(named) and Path(os.path.realpath(named)) == data_dir.resolve()
            and environment.get(ENGINE_SLOT_ENV, "0") == str(slot))


def reap_orphaned_engines(data_dir: Path, slot: int = 0) -> list[int]:
    """Kills vLLM processes of this data folder and slot whose owner died (reparented to init): the
    engine of a killed run worker, or the server of a killed supervisor. Another slot's engines are
    left to that slot's own runs, which hold its lock: reaping across slots could cut a host out
    from under the run that owns it."""
    reaped = []
    for process in psutil.process_iter(["pid", "ppid"]):
        if process.info["ppid"] == 1 and _is_engine(process) and _serves_slot(process, data_dir, slot):
            try:
                process.kill()
            except psutil.Error:
                continue
            reaped.append(process)
    psutil.wait_procs(reaped, timeout=10)
    return [process.pid for process in reaped]


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


def stop_signals() -> threading.Event:
    """Set by SIGINT or SIGTERM, so a main loop can shut its children down in order."""
    requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: requested.set())
    return requested
