"""The services a test starts and the engine processes it must find or leave behind."""

import os
import signal
import subprocess
import time
from pathlib import Path


def wait_for(predicate, timeout: float, what: str, process: subprocess.Popen):
    """Polls until `predicate` returns something truthy; fails early if `process` (the service
    under test) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args[0]} exited while waiting for {what}"
        if value := predicate():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def stop_launcher(launcher: subprocess.Popen, log) -> None:
    """`make run`'s launcher takes its services down on SIGTERM; its log is closed whatever happens."""
    launcher.send_signal(signal.SIGTERM)
    try:
        launcher.wait(timeout=60)
    finally:
        log.close()


def orphaned_engine(owner: str, title: str = "VLLM::EngineCore", slot: str | None = None) -> int:
    """A process titled like an engine process whose parent died, as a killed run worker or engine
    supervisor leaves it, marked with the data folder (and slot) it was started for."""
    import psutil

    from batch_pipeline.core.processes import ENGINE_OWNER_ENV, ENGINE_SLOT_ENV

    environment = {key: value for key, value in os.environ.items() if key != ENGINE_SLOT_ENV}
    environment[ENGINE_OWNER_ENV] = owner
    if slot is not None:
        environment[ENGINE_SLOT_ENV] = slot
    started = subprocess.run(["bash", "-c", f"(exec -a '{title}' sleep 300) >/dev/null 2>&1 & echo $!"],
                             env=environment, capture_output=True, text=True, check=True)
    pid = int(started.stdout)
    deadline = time.monotonic() + 10
    while psutil.Process(pid).ppid() != 1:
        assert time.monotonic() < deadline, "the stand-in engine was not reparented to init"
        time.sleep(0.05)
    return pid


def processes_mentioning(path: Path) -> list:
    """Processes whose command line names `path`: a test's services, engine servers and supervisors."""
    import psutil

    return [p for p in psutil.process_iter(["cmdline"]) if str(path) in " ".join(p.info["cmdline"] or [])]
