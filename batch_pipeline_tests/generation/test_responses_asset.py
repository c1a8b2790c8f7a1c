"""`batch_responses` around the engine, with no engine: finished cells, stop requests and a full disk."""

import subprocess
import uuid

import pytest
from dagster import DagsterInstance, Definitions, materialize

from batch_pipeline.core.names import EXACT_TAG
from batch_pipeline.core.partitions import MODELS, dataset_model_key
from batch_pipeline.core.processes import ProcessIdentity
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.core.stop_request import request_stop
from batch_pipeline.core.storage import TEMP_MARKER
from batch_pipeline.generation.assets import batch_responses
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.engine import factory
from batch_pipeline.generation.engine.server_state import ServerFiles, ServerState
from batch_pipeline.generation.manifest import UNRECORDED, read_manifest
from batch_pipeline.generation.quality import read_quality
from batch_pipeline_tests.support.models import MODEL, TEST_REGISTRY
from batch_pipeline_tests.support.results import result, validated_dataset

KEY = "done-0123456789"


@pytest.fixture
def instance():
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(MODELS.name, [MODEL])
    return instance


def _finished_chunks(instance, pipeline, rows: int = 150) -> ChunkStore:
    validated_dataset(instance, pipeline, KEY, rows)
    store = ChunkStore(pipeline.layout.responses(KEY, MODEL).chunks)
    store.prepare()
    store.write(0, [result(i, f"answer {i}", 3) for i in range(100)])
    store.write(1, [result(i, f"answer {i}", 3) for i in range(100, rows)])
    return store


def _materialize(instance, pipeline, tags=None):
    return materialize([batch_responses], partition_key=dataset_model_key(KEY, MODEL), instance=instance,
                       resources={"pipeline": pipeline}, raise_on_error=False, tags=tags)


def _failure_message(result) -> str:
    [failure] = result.get_step_failure_events()
    return failure.event_specific_data.error.message


@pytest.fixture
def warm_server(pipeline):
    """A stand-in for a warm vLLM server: a live process group the state file names."""
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    files = ServerFiles(pipeline.layout.engine_server)
    files.write(ServerState(status="ready", supervisor=ProcessIdentity.of(process.pid), port=9,
                            fingerprint="abc", started_by_model=MODEL, started_at=0))
    yield process, files
    process.kill()
    process.wait()


def test_a_cell_with_every_row_on_disk_loads_no_engine_and_keeps_the_warm_server(instance, pipeline, warm_server):
    process, files = warm_server
    _finished_chunks(instance, pipeline)
    result = _materialize(instance, pipeline)
    assert result.success
    metadata = {k: v.value for k, v in result.asset_materializations_for_node("batch_responses")[0].metadata.items()}
    assert (metadata["engine"], metadata["rows"], metadata["rows_generated_this_run"]) == ("none", 150, 0)
    assert factory._loaded is None
    assert process.poll() is None and files.read() is not None
    paths = pipeline.layout.responses(KEY, MODEL)
    assert len(paths.output.read_text().splitlines()) == 150
    checks = {evaluation.check_name: evaluation.passed for evaluation in result.get_asset_check_evaluations()}
    assert checks == {"answers_not_truncated": True, "requests_not_refused": True, "answers_not_empty": True,
                      "structured_answers_valid": True}
    assert read_quality(paths.quality).blocking_failures == []


@pytest.fixture
def small_disk(tmp_path):
    """A real full disk: a 1 MiB tmpfs (needs root; the chunk writer's own test injects the fault)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(disk) -> None:
    with (disk / "filler").open("wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass


def test_a_full_disk_fails_the_run_clearly_keeps_no_partial_file_and_resumes_once_freed(instance, small_disk):
    (small_disk / "data").mkdir()
    (small_disk / "data" / "registry.yaml").write_text(TEST_REGISTRY)
    pipeline = PipelineConfig(data_dir=str(small_disk / "data"), engine_mode="in_process")
    _finished_chunks(instance, pipeline, rows=150)
    _fill(small_disk)
    failed = _materialize(instance, pipeline)
    assert not failed.success
    message = _failure_message(failed)
    assert "the disk is full" in message and "2 finished chunk(s) are safe" in message
    paths = pipeline.layout.responses(KEY, MODEL)
    assert not paths.output.exists() and not list(paths.folder.rglob(f"*{TEMP_MARKER}*"))
    (small_disk / "filler").unlink()
    assert _materialize(instance, pipeline).success
    assert len(paths.output.read_text().splitlines()) == 150



def test_a_stop_requested_before_the_engine_loads_is_honoured_without_loading_it(instance, pipeline, warm_server):
    process, files = warm_server
    store = _finished_chunks(instance, pipeline)
    store.paths()[-1].unlink()  # 50 rows still to generate
    run_id = str(uuid.uuid4())
    request_stop(pipeline.layout.responses(KEY, MODEL).stop_request, run_id)
    job = Definitions(assets=[batch_responses], resources={"pipeline": pipeline}).resolve_implicit_global_asset_job_def()
    stopped = job.execute_in_process(partition_key=dataset_model_key(KEY, MODEL), instance=instance, run_id=run_id,
                                     raise_on_error=False)
    assert not stopped.success and "stopped on request" in _failure_message(stopped)
    assert factory._loaded is None and process.poll() is None and files.read().status == "ready"
    assert len(store.paths()) == 1


def test_a_stop_request_for_another_run_is_ignored(instance, pipeline):
    _finished_chunks(instance, pipeline)
    request_stop(pipeline.layout.responses(KEY, MODEL).stop_request, "an-earlier-run")
    assert _materialize(instance, pipeline).success


def test_chunks_without_a_manifest_are_recorded_as_of_an_unknown_engine_and_exact_refuses_a_changed_one(
        instance, pipeline):
    _finished_chunks(instance, pipeline)
    paths = pipeline.layout.responses(KEY, MODEL)
    result = _materialize(instance, pipeline)
    assert result.success
    first = read_manifest(paths.manifest)
    assert first.earlier_engines == [UNRECORDED] and first.registry_entry.sampling.temperature == 0.0
    metadata = {k: v.value for k, v in result.asset_materializations_for_node("batch_responses")[0].metadata.items()}
    assert metadata["engine_fingerprint"] == first.fingerprint == metadata["manifest"]["fingerprint"]
    assert metadata["manifest_file"] == str(paths.manifest)

    pipeline.layout.registry.write_text(TEST_REGISTRY.replace("temperature: 0.0", "temperature: 0.5"))
    refused = _materialize(instance, pipeline, tags={EXACT_TAG: "true"})
    assert not refused.success
    assert "sampling.temperature: 0.0 -> 0.5" in _failure_message(refused)
    assert read_manifest(paths.manifest) == first

    warned = _materialize(instance, pipeline)
    assert warned.success
    assert read_manifest(paths.manifest).earlier_engines == [UNRECORDED, first.fingerprint]
