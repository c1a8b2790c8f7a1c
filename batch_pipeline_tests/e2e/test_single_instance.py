"""One `make run` per data folder: a second one exits at once, naming the holder and the folder, and
touches nothing of the first one's (its engine hosts, its shim's upload temps)."""

import os
import subprocess
import sys
import time

import pytest

from batch_pipeline.core.loopback import answers, free_port
from batch_pipeline.core.processes import ProcessIdentity
from batch_pipeline.core.single_instance import AlreadyRunning, hold_data_folder
from batch_pipeline.core.storage import TEMP_MARKER
from batch_pipeline.generation.engine.server_state import ServerFiles, ServerState
from batch_pipeline.tools.prepare_instance import prepare_instance
from batch_pipeline_tests.support.models import PROJECT_ROOT
from batch_pipeline_tests.support.processes import stop_launcher, wait_for


def test_the_lock_names_its_holder_and_is_freed_with_it(tmp_path):
    held = hold_data_folder(tmp_path / "data")
    with pytest.raises(AlreadyRunning, match=rf"pid {os.getpid()}\b.*{tmp_path / 'data'}"):
        hold_data_folder(tmp_path / "data")
    held.close()
    hold_data_folder(tmp_path / "data").close()


@pytest.mark.e2e
def test_a_second_make_run_on_the_same_folder_is_refused_and_touches_nothing(data_root, tmp_path):
    home = tmp_path / "dagster_home"
    prepare_instance(home, postgres_url=None)
    env = {**os.environ, "DAGSTER_HOME": str(home), "BATCH_PIPELINE_DATA": str(data_root),
           "BATCH_PIPELINE_PRELOAD_ENGINE": "0"}
    port, shim_port = free_port(), free_port()
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen([sys.executable, "-m", "batch_pipeline.cli", "serve", "--port", str(port),
                              "--shim-port", str(shim_port), "--no-demo"],
                             cwd=PROJECT_ROOT, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    stand_in_host = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{shim_port}/health"), 120, "the first instance's shim", first)
        # The first instance's state a second one used to destroy: a slot's engine host (a stand-in
        # process its shutdown would stop) and an upload the shim is still writing.
        files = ServerFiles(data_root / "engine")
        host = ServerState(status="ready", supervisor=ProcessIdentity.of(stand_in_host.pid), port=free_port(),
                           fingerprint="abc", started_by_model="m", started_at=time.time())
        files.write(host)
        in_flight = data_root / "shim" / "files" / f"file-abc.jsonl{TEMP_MARKER}{first.pid}-1234abcd"
        in_flight.write_text("half an upload")

        second = subprocess.run([sys.executable, "-m", "batch_pipeline.cli", "serve", "--port", str(free_port()),
                                 "--shim-port", str(free_port()), "--no-demo"],
                                cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        assert f"pid {first.pid}" in second.stderr and str(data_root) in second.stderr, second.stderr
        assert stand_in_host.poll() is None and files.read() == host
        assert in_flight.read_text() == "half an upload"
        assert first.poll() is None and answers(f"http://127.0.0.1:{shim_port}/health")
        files.state.unlink()  # the stand-in is not the first instance's to stop
    finally:
        stand_in_host.kill()
        stand_in_host.wait()
        stop_launcher(first, log)
    assert first.returncode == 0
