"""`make run`'s launcher with the real Dagster webserver and daemon: a file dropped in the inbox
comes back as output.jsonl, and stopping the launcher leaves no process behind."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from batch_pipeline.tools.prepare_instance import prepare_instance
from batch_pipeline_tests.conftest import MODEL, PROJECT_ROOT, write_batch

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str, process: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"launcher exited early while waiting for {what}"
        if value := predicate():
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _webserver_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_inbox_file_becomes_output_through_the_daemon(data_root, tmp_path):
    home = tmp_path / "dagster_home"
    prepare_instance(home, postgres_url=None)
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "BATCH_PIPELINE_DATA": str(data_root),
           "BATCH_PIPELINE_SENSOR_INTERVAL": "1", "BATCH_PIPELINE_INBOX_SETTLE_SECONDS": "0.5"}
    log = (tmp_path / "launcher.log").open("w")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "batch_pipeline.tools.serve", "--port", str(port), "--no-demo"],
        cwd=PROJECT_ROOT, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: _webserver_up(port), 120, "the webserver", launcher)
        write_batch(data_root / "inbox" / "e2e.jsonl.part", 30)
        os.replace(data_root / "inbox" / "e2e.jsonl.part", data_root / "inbox" / "e2e.jsonl")
        output = _wait_for(lambda: next(data_root.glob(f"datasets/e2e-*/responses/{MODEL}/output.jsonl"), None),
                           600, "output.jsonl", launcher)
        lines = [json.loads(line) for line in output.read_text().splitlines()]
        assert sorted(line["custom_id"] for line in lines) == [f"req-{i:05d}" for i in range(30)]
        assert not (data_root / "inbox" / "e2e.jsonl").exists()

        with DagsterInstance.from_config(str(home)) as instance:
            runs = _wait_for(
                lambda: [r for r in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))]
                if len(instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))) == 2 else None,
                60, "both runs to be recorded as successful", launcher)
            assert {r.job_name for r in runs} == {"ingest_batch", "generate_responses"}
    finally:
        launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(timeout=60)
        finally:
            log.close()
    time.sleep(1)
    leftovers = subprocess.run(["pgrep", "-g", str(launcher.pid)], capture_output=True, text=True).stdout
    assert leftovers == "", f"processes left behind: {leftovers}"
    assert not _webserver_up(port)
