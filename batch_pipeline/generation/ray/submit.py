"""Runs a cell on a Ray cluster: one Ray job per attempt, submitted through dagster-ray's Pipes client so
its log lines reach the run, and stopped at a chunk boundary by a cancel, an expiry or a Dagster stop,
or stopped and retried when it writes no chunk for the stall deadline."""

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from dagster import AssetExecutionContext, Failure

from batch_pipeline.core.processes import StopTimeout
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.generation.checkpointing import GenerationSummary
from batch_pipeline.generation.chunks import ChunkPolicy, ChunkStore, ResumePoint
from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline.generation.ray.job import CELL_METADATA_KEY, RayCellJob
from batch_pipeline.generation.results import combine, tally_chunk


def _stop_earlier_jobs(client, cell: str, log: Callable[[str], None], seconds: float) -> None:
    """A run worker killed outright leaves its Ray job running; it must end before a new job writes
    the same cell's chunks. StopTimeout names the jobs still running after `seconds`."""
    earlier = [job.submission_id for job in client.list_jobs()
               if (job.metadata or {}).get(CELL_METADATA_KEY) == cell and not job.status.is_terminal()]
    for submission_id in earlier:
        log(f"stopping Ray job {submission_id}, left running by an earlier attempt")
        client.stop_job(submission_id)
    deadline = time.monotonic() + seconds
    while running := [submission_id for submission_id in earlier
                      if not client.get_job_status(submission_id).is_terminal()]:
        if time.monotonic() >= deadline:
            raise StopTimeout(f"Ray job(s) {', '.join(running)} of an earlier attempt at {cell} did not stop within "
                              f"{seconds:.0f}s (BATCH_PIPELINE_ENGINE_STOP_SECONDS)")
        time.sleep(1)


class JobWatch:
    """Stops the Ray job when asked (a cancel, an expiry), or once it has written no new chunk for
    `stall_seconds` (a hung actor would hold the GPU pool for good), and says which."""

    def __init__(self, client, submission_id: str, should_stop: Callable[[], bool], chunks: Callable[[], int],
                 stall_seconds: float, poll_seconds: float = 1.0):
        self._client, self._submission_id = client, submission_id
        self._should_stop, self._chunks = should_stop, chunks
        self._stall, self._poll = stall_seconds, poll_seconds
        self.done = threading.Event()
        self.reason: Literal["asked", "stalled"] | None = None

    def run(self) -> None:
        seen, since = self._chunks(), time.monotonic()
        while not self.done.wait(self._poll):
            if self._should_stop():
                return self._stop("asked")
            if (now := self._chunks()) != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since >= self._stall:
                return self._stop("stalled")

    def _stop(self, reason: Literal["asked", "stalled"]) -> None:
        self.reason = reason
        self._client.stop_job(self._submission_id)


def generate_on_ray(context: AssetExecutionContext, pipeline: PipelineConfig, spec: EngineSpec, requests_path: Path,
                    store: ChunkStore, resume: ResumePoint, total: int,
                    should_stop: Callable[[], bool]) -> GenerationSummary:
    from dagster_ray import PipesRayJobClient
    from ray.job_submission import JobSubmissionClient

    if not pipeline.ray_address:
        raise Failure(f"model {spec.model} runs on Ray (its registry entry has `ray`), but no cluster is configured: "
                      "set BATCH_PIPELINE_RAY_ADDRESS to its Job Submission address (e.g. http://127.0.0.1:8265)",
                      allow_retries=False)
    cell = context.partition_key
    job = RayCellJob(spec=spec, placement=spec.entry.ray, requests=str(requests_path), chunks=str(store.folder),
                     data_dir=str(pipeline.layout.root), chunking=ChunkPolicy.of(pipeline),
                     max_in_flight=pipeline.max_in_flight)
    client = JobSubmissionClient(pipeline.ray_address)
    try:
        _stop_earlier_jobs(client, cell, context.log.info, pipeline.engine_stop_seconds)
    except StopTimeout as exc:  # a retry finds them stopped, or fails the same way
        raise Failure(f"{exc}; no new job was started beside them", allow_retries=True) from None
    submission_id = f"cell-{context.run.run_id[:8]}-{context.retry_number}-{int(time.time())}"
    before, started = set(store.paths()), time.monotonic()
    watch = JobWatch(client, submission_id, should_stop, lambda: len(store.paths()), pipeline.engine_stall_seconds)
    threading.Thread(target=watch.run, daemon=True).start()
    try:
        # dagster-ray 0.4.8: a client's message reader keeps the first run's state, so each run gets its own.
        PipesRayJobClient(address=pipeline.ray_address, poll_interval=1).run(
            context=context, extras={"job": job.model_dump(mode="json")},
            submit_job_params={"entrypoint": f"{sys.executable} -m batch_pipeline.generation.ray.job",
                               "submission_id": submission_id, "metadata": {CELL_METADATA_KEY: cell}})
    except RuntimeError as exc:  # the job failed, or was stopped
        if watch.reason == "stalled":
            raise Failure(f"Ray job {submission_id} for {spec.model} wrote no chunk for "
                          f"{pipeline.engine_stall_seconds:.0f}s (BATCH_PIPELINE_ENGINE_STALL_SECONDS): it was taken "
                          f"to be hung and stopped; the run is retried and resumes from the {len(store.paths())} "
                          "chunk(s) on disk", allow_retries=True) from None
        if watch.reason != "asked":
            raise Failure(f"Ray job {submission_id} did not finish: {exc}; its finished chunks are kept") from None
    finally:
        watch.done.set()
    new = combine(tally_chunk(path) for path in set(store.paths()) - before)
    return GenerationSummary(rows_total=total, rows_resumed=len(resume.done_rows), chunks_resumed=resume.chunks,
                             rows_generated=new.rows, completion_tokens_generated=new.completion_tokens,
                             seconds=time.monotonic() - started, stopped=watch.reason == "asked")
