"""A GPU run killed with SIGKILL mid-batch resumes from its chunks on the rerun."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from dagster import instance_for_test, materialize

from batch_pipeline.core.partitions import DATASETS, MODELS, dataset_model_key
from batch_pipeline.generation.assets import batch_responses
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.intake.assets import batch_requests
from batch_pipeline_tests.support.batches import write_batch
from batch_pipeline_tests.support.models import MODEL, PROJECT_ROOT

pytestmark = pytest.mark.engine_subprocess

KEY = "crash-0123456789"
# Fewer requests in flight than a chunk holds: the kill can lose at most one chunk's work.
IN_FLIGHT = 40

_RUN_IN_CHILD = textwrap.dedent("""
    import os
    import sys
    from dagster import DagsterInstance, materialize
    from batch_pipeline.intake.assets import batch_requests
    from batch_pipeline.generation.assets import batch_responses
    from batch_pipeline.core.partitions import DATASETS, MODELS, dataset_model_key
    from batch_pipeline.core.resources import PipelineConfig

    if __name__ == "__main__":
        data_dir, home = sys.argv[1], sys.argv[2]
        os.makedirs(home, exist_ok=True)
        with DagsterInstance.local_temp(home) as instance:
            instance.add_dynamic_partitions(DATASETS.name, ["{key}"])
            instance.add_dynamic_partitions(MODELS.name, ["{model}"])
            materialize([batch_requests, batch_responses], selection=[batch_responses],
                        partition_key=dataset_model_key("{key}", "{model}"), instance=instance,
                        resources={{"pipeline": PipelineConfig(data_dir=data_dir, max_in_flight={in_flight})}})
""").format(key=KEY, model=MODEL, in_flight=IN_FLIGHT)


def _wait_for_chunks(store: ChunkStore, count: int, child: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(store.paths()) < count:
        assert child.poll() is None, "the run ended before it could be killed: see child.log"
        assert time.monotonic() < deadline, "no chunks appeared in time"
        time.sleep(0.02)


def _wait_until_gone(pgid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes of group {pgid} survived SIGKILL")


def test_killed_run_resumes_from_its_chunks(pipeline, tmp_path):
    write_batch(pipeline.layout.dataset(KEY).input, 400)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(DATASETS.name, [KEY])
        assert materialize([batch_requests], partition_key=KEY, instance=instance,
                           resources={"pipeline": pipeline}).success

    script = tmp_path / "run_child.py"
    script.write_text(_RUN_IN_CHILD)
    log = (tmp_path / "child.log").open("w")
    child = subprocess.Popen([sys.executable, str(script), pipeline.data_dir, str(tmp_path / "home")],
                             cwd=PROJECT_ROOT, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    store = ChunkStore(pipeline.layout.responses(KEY, MODEL).chunks)
    try:
        _wait_for_chunks(store, 2, child, timeout=300)
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        _wait_until_gone(child.pid)
    survived = len(store.paths())
    assert 2 <= survived < 4
    rows_on_disk = len(store.done_rows())

    with instance_for_test() as instance:
        instance.add_dynamic_partitions(DATASETS.name, [KEY])
        instance.add_dynamic_partitions(MODELS.name, [MODEL])
        result = materialize([batch_requests, batch_responses], selection=[batch_responses],
                             partition_key=dataset_model_key(KEY, MODEL), instance=instance,
                             resources={"pipeline": pipeline})
    metadata = result.asset_materializations_for_node("batch_responses")[0].metadata
    assert metadata["chunks_resumed"].value == survived
    assert metadata["rows_generated_this_run"].value == 400 - rows_on_disk
    assert metadata["rows"].value == 400
    assert not [p for p in store.folder.iterdir() if ".tmp-" in p.name]
    paths = pipeline.layout.responses(KEY, MODEL)
    lines = paths.output.read_text().splitlines() + paths.errors.read_text().splitlines()
    assert len(lines) == 400
