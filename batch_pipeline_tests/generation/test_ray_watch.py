"""A cell's Ray job is watched: stopped when the batch asks, and stopped and failed for a retry when it
writes no chunk for the stall deadline (a hung actor), with scripted Ray clients and no cluster."""

import threading
from types import SimpleNamespace

import pytest
from dagster import Failure

from batch_pipeline.core.registry import parse_registry
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline.generation.ray import submit
from batch_pipeline.generation.ray.submit import JobWatch
from batch_pipeline_tests.support.models import EMBEDDED_MODEL_DIR, MODEL


class _Jobs:
    """A Job Submission client: no earlier job, and records what it is told to stop."""

    def __init__(self):
        self.stopped: list[str] = []
        self.stop_called = threading.Event()

    def list_jobs(self):
        return []

    def stop_job(self, submission_id: str) -> None:
        self.stopped.append(submission_id)
        self.stop_called.set()


def test_a_job_that_writes_no_chunk_is_stopped_as_stalled():
    jobs = _Jobs()
    watch = JobWatch(jobs, "cell-1", should_stop=lambda: False, chunks=lambda: 3, stall_seconds=0.05,
                     poll_seconds=0.01)
    watch.run()
    assert (watch.reason, jobs.stopped) == ("stalled", ["cell-1"])


def test_a_job_the_batch_no_longer_wants_is_stopped_as_asked():
    jobs, polls = _Jobs(), iter(range(1000))
    watch = JobWatch(jobs, "cell-1", should_stop=lambda: next(polls) >= 3, chunks=lambda: 0, stall_seconds=3600,
                     poll_seconds=0.01)
    watch.run()
    assert (watch.reason, jobs.stopped) == ("asked", ["cell-1"])


def test_a_hung_ray_job_fails_the_run_for_a_retry_that_resumes(tmp_path, monkeypatch):
    import dagster_ray
    import ray.job_submission

    jobs = _Jobs()

    class HungPipesClient:
        """Its job answers nothing until it is stopped, then fails as Ray reports a stopped job."""

        def __init__(self, **kwargs):
            pass

        def run(self, **kwargs):
            assert jobs.stop_called.wait(60)
            raise RuntimeError("Job cell-x stopped")

    monkeypatch.setattr(dagster_ray, "PipesRayJobClient", HungPipesClient)
    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", lambda address: jobs)
    registry = parse_registry(f"""models:
  {MODEL}:
    engine: {{model: {EMBEDDED_MODEL_DIR}, dtype: bfloat16, max_model_len: 2048}}
    ray: {{actors: 1, cpus_per_actor: 1}}
""", "test")
    spec = EngineSpec.of(registry, MODEL, tmp_path)
    pipeline = PipelineConfig(data_dir=str(tmp_path), ray_address="http://127.0.0.1:1", engine_stall_seconds=0.1)
    context = SimpleNamespace(partition_key=f"d|{MODEL}", run=SimpleNamespace(run_id="0123456789abcdef"),
                              retry_number=0, log=SimpleNamespace(info=lambda line: None))
    store = ChunkStore(tmp_path / "chunks")
    with pytest.raises(Failure) as failure:
        submit.generate_on_ray(context, pipeline, spec, tmp_path / "requests.parquet", store, store.prepare(), 10,
                               should_stop=lambda: False)
    assert failure.value.allow_retries is True and len(jobs.stopped) == 1
    assert "wrote no chunk for 0s (BATCH_PIPELINE_ENGINE_STALL_SECONDS)" in str(failure.value)
    assert "retried and resumes from the 0 chunk(s) on disk" in str(failure.value)
