"""Stops that wait have a deadline: the engine host's process group and an earlier attempt's Ray jobs.
Past it the stop fails naming what is left, instead of waiting for good."""

import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import psutil
import pytest

from batch_pipeline.core.processes import StopTimeout, kill_until_gone
from batch_pipeline.generation.ray.job import CELL_METADATA_KEY
from batch_pipeline.generation.ray.submit import _stop_earlier_jobs


def _alive(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process] if process.status() != psutil.STATUS_ZOMBIE else []
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def sleeper():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield psutil.Process(child.pid)
    child.kill()
    child.wait()


def test_killing_ends_once_the_processes_are_gone(sleeper):
    kill_until_gone(lambda: _alive(sleeper), 60, "stopping a test child")
    assert not _alive(sleeper)


def test_a_process_that_survives_the_kill_is_named_at_the_deadline(sleeper, monkeypatch):
    monkeypatch.setattr(psutil.Process, "kill", lambda self: None)  # as a process stuck in the kernel
    with pytest.raises(StopTimeout) as failure:
        kill_until_gone(lambda: _alive(sleeper), 0.2, "stopping a test child")
    assert _alive(sleeper)
    message = str(failure.value)
    assert message.startswith("stopping a test child: processes ") and f"{sleeper.pid} (" in message
    assert "BATCH_PIPELINE_ENGINE_STOP_SECONDS" in message


# Runs as the leader of its own process group, as the supervisor does: a "server" that stops on SIGTERM and
# a member that ignores it.
_GROUP = textwrap.dedent("""
    import json, subprocess, sys, psutil
    from batch_pipeline.core.processes import StopTimeout, group_members
    from batch_pipeline.generation.engine import server_supervisor
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    stubborn = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE)
    stubborn.stdout.readline()
    if sys.argv[1] == "unkillable":
        psutil.Process.kill = lambda self: None
    try:
        server_supervisor._stop_own_group(server, 0.5)
        outcome = "stopped"
    except StopTimeout as exc:
        outcome = str(exc)
        stubborn.kill()
    stubborn.wait()
    print(json.dumps({"outcome": outcome, "stubborn": stubborn.pid, "server": server.returncode}))
""")


def _stop_group(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _GROUP, mode], capture_output=True, text=True, timeout=120,
                          start_new_session=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_the_engine_host_group_is_stopped_including_members_that_ignore_sigterm():
    result = _stop_group("killable")
    assert result["outcome"] == "stopped" and result["server"] is not None


def test_a_group_member_that_will_not_die_is_named_instead_of_waited_for_forever():
    result = _stop_group("unkillable")
    assert result["outcome"].startswith("stopping the engine host's process group ")
    assert f"{result['stubborn']} (" in result["outcome"] and "were still alive" in result["outcome"]


class _Status:
    def __init__(self, terminal: bool):
        self.terminal = terminal

    def is_terminal(self) -> bool:
        return self.terminal


class _RayJobs:
    """A Job Submission client with one job of the cell left running by an earlier attempt."""

    def __init__(self, stops: bool):
        self.stops, self.stopped = stops, []
        self.jobs = [SimpleNamespace(submission_id="cell-old", metadata={CELL_METADATA_KEY: "d|m"}, status=_Status(False)),
                     SimpleNamespace(submission_id="other", metadata={CELL_METADATA_KEY: "e|m"}, status=_Status(False))]

    def list_jobs(self):
        return self.jobs

    def stop_job(self, submission_id: str) -> None:
        self.stopped.append(submission_id)

    def get_job_status(self, submission_id: str) -> _Status:
        return _Status(self.stops and submission_id in self.stopped)


def test_an_earlier_ray_job_of_the_cell_is_stopped_and_waited_for():
    client, logged = _RayJobs(stops=True), []
    _stop_earlier_jobs(client, "d|m", logged.append, seconds=60)
    assert client.stopped == ["cell-old"] and logged == ["stopping Ray job cell-old, left running by an earlier attempt"]


def test_an_earlier_ray_job_that_does_not_stop_is_named_at_the_deadline():
    client = _RayJobs(stops=False)
    with pytest.raises(StopTimeout, match=r"Ray job\(s\) cell-old of an earlier attempt at d\|m did not stop within 0s "
                                          r"\(BATCH_PIPELINE_ENGINE_STOP_SECONDS\)"):
        _stop_earlier_jobs(client, "d|m", lambda line: None, seconds=0)
    assert client.stopped == ["cell-old"]
