"""Process control never signals a process it did not start, and leaves no engine orphan behind."""

import os
import signal
import subprocess

import psutil
import pytest

from batch_pipeline.core.processes import (
    ENGINE_HOST_MODULE,
    ProcessIdentity,
    reap_orphaned_engines,
    signal_process,
    stop_group,
)
from batch_pipeline.generation.engine.server import stop_server
from batch_pipeline.generation.engine.server_state import ServerFiles, ServerState
from batch_pipeline_tests.support.processes import orphaned_engine


@pytest.fixture
def bystander():
    """A process we did not start for the pipeline, leading its own group, as after a reboot a
    recorded pid can name anyone."""
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def _recorded_before_a_reboot(process: subprocess.Popen) -> ProcessIdentity:
    return ProcessIdentity(pid=process.pid, started_at=psutil.Process(process.pid).create_time() - 3600)


def test_a_recorded_pid_now_owned_by_another_process_is_never_signalled(bystander):
    stale = _recorded_before_a_reboot(bystander)
    assert stale.process() is None
    assert not signal_process(stale, signal.SIGTERM)
    assert stop_group(stale, grace_seconds=0)  # nothing of ours left to stop
    assert bystander.poll() is None


def test_a_stale_server_state_is_cleared_without_signalling_anyone(tmp_path, bystander):
    files = ServerFiles(tmp_path)
    files.write(ServerState(status="ready", supervisor=_recorded_before_a_reboot(bystander), port=9,
                            fingerprint="abc", started_by_model="m", started_at=0))
    stop_server(files)
    assert files.read() is None and bystander.poll() is None


def test_the_group_of_a_live_recorded_process_is_stopped(bystander):
    identity = ProcessIdentity.of(bystander.pid)
    assert stop_group(identity, grace_seconds=5)
    assert bystander.wait(timeout=5) == -signal.SIGTERM


@pytest.mark.parametrize("title", ["VLLM::EngineCore", f"python -m {ENGINE_HOST_MODULE}"])
def test_orphaned_engines_of_this_data_folder_are_reaped_and_others_left_alone(tmp_path, title):
    ours = tmp_path / "ours"
    ours.mkdir()
    mine, theirs = orphaned_engine(str(ours), title), orphaned_engine(str(tmp_path / "theirs"), title)
    try:
        assert reap_orphaned_engines(ours) == [mine]
        assert not psutil.pid_exists(mine) and psutil.pid_exists(theirs)
    finally:
        os.kill(theirs, signal.SIGKILL)
