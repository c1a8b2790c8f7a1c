"""The shim's behaviour behind the HTTP routes: files, batches, and their truthful status."""

import os
import shutil
import threading
import time
import uuid
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunRecord

from batch_pipeline.api.lifecycle import Decision, Finish, Observation, decide
from batch_pipeline.api.models import TERMINAL_STATUSES, BatchCreate, BatchObject, FileObject, QueueEntry
from batch_pipeline.api.placement import place_batch_input
from batch_pipeline.api.store import ShimStore
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.names import (
    BATCH_ID_TAG,
    PRIORITY_TAG,
    REASON_TAG,
    REQUESTS_ASSET,
    RESPONSES_ASSET,
    WILL_RETRY_TAG,
)
from batch_pipeline.core.partitions import dataset_model_key
from batch_pipeline.core.registry import Registry, load_registry
from batch_pipeline.core.runs import is_active, latest_run, latest_tagged_run
from batch_pipeline.core.storage import atomic_path
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.results import ResponseTotals, combine, tally_chunk, write_output_files
from batch_pipeline.intake.openai_format import BatchLineError, BatchOutputLine, new_id
from batch_pipeline.intake.requests_table import iter_requests
from batch_pipeline.intake.validation import read_validation
from batch_pipeline.queue.runs import gpu_queue, partition_of, tag_priority

_EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


class ShimError(Exception):
    """An API error: HTTP status, OpenAI error type and code, and the offending parameter."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def _now() -> int:
    return int(time.time())


def run_status(record: RunRecord | None) -> str | None:
    return record.dagster_run.status.value if record else None


class ShimService:
    def __init__(self, layout: DataLayout, instance: DagsterInstance, completion_window_seconds: int,
                 max_upload_bytes: int):
        self.layout = layout
        self.instance = instance
        self.completion_window_seconds = completion_window_seconds
        self.max_upload_bytes = max_upload_bytes
        self.store = ShimStore(layout.shim_database)
        self.files_dir = layout.shim_files
        self.files_dir.mkdir(parents=True, exist_ok=True)
        # One writer at a time for batch records: HTTP threads and the refresher share them.
        self._lock = threading.RLock()
        self._chunk_totals: dict[Path, ResponseTotals] = {}

    def registry(self) -> Registry:
        return load_registry(self.layout.registry)

    # Files
    def new_upload_path(self) -> tuple[str, Path]:
        file_id = new_id("file-")
        return file_id, self.files_dir / f"{file_id}.jsonl"

    def add_file(self, file_id: str, path: Path, filename: str, purpose: str) -> FileObject:
        file = FileObject(id=file_id, bytes=path.stat().st_size, created_at=_now(), filename=filename,
                          purpose=purpose)
        self.store.add_file(file, path)
        return file

    def file(self, file_id: str) -> tuple[FileObject, Path]:
        found = self.store.file(file_id)
        if found is None:
            raise ShimError(404, f"No such File object: {file_id}", param="id", code="file_not_found")
        return found

    def delete_file(self, file_id: str) -> None:
        with self._lock:
            _, path = self.file(file_id)
            if self.store.file_in_use(file_id):
                raise ShimError(409, f"File {file_id} is used by a batch that has not finished", param="file_id",
                                code="file_in_use")
            self.store.delete_file(file_id)
            path.unlink(missing_ok=True)

    # Batches
    def create_batch(self, request: BatchCreate) -> BatchObject:
        file, path = self.file(request.input_file_id)
        if file.purpose != "batch":
            raise ShimError(400, f"File {file.id} has purpose '{file.purpose}'; batch inputs need 'batch'",
                            param="input_file_id", code="invalid_file_purpose")
        batch_id = new_id("batch_")
        with self._lock:
            dataset = place_batch_input(self.layout, path, file.filename, batch_id, self.registry())
            now = _now()
            batch = BatchObject(id=batch_id, endpoint=request.endpoint, input_file_id=file.id,
                                completion_window=request.completion_window, status="validating",
                                created_at=now, expires_at=now + self.completion_window_seconds,
                                metadata=request.metadata)
            self.store.add_batch(batch, dataset)
        return batch

    def _stored(self, batch_id: str) -> tuple[BatchObject, str]:
        found = self.store.batch(batch_id)
        if found is None:
            raise ShimError(404, f"No such Batch object: {batch_id}", param="batch_id", code="batch_not_found")
        return found

    def batch(self, batch_id: str) -> BatchObject:
        return self._refresh(batch_id)

    def batches(self, limit: int, after: str | None) -> tuple[list[BatchObject], bool]:
        page = self.store.batches(limit + 1, after)
        return [self._refresh(batch.id) for batch in page[:limit]], len(page) > limit

    def cancel(self, batch_id: str) -> BatchObject:
        with self._lock:
            batch = self._refresh(batch_id)
            if batch.status in TERMINAL_STATUSES:
                raise ShimError(409, f"Cannot cancel a batch with status '{batch.status}'", param="batch_id",
                                code="batch_not_cancellable")
            if batch.cancelling_at is None:
                self.store.save_batch(batch.model_copy(update={"status": "cancelling", "cancelling_at": _now()}))
            return self._refresh(batch_id)

    def refresh_active(self) -> None:
        for batch, _ in self.store.active_batches():
            self._refresh(batch.id)

    # Status
    def _totals(self, store: ChunkStore) -> ResponseTotals:
        """Chunks never change once written, so each is read once."""
        paths = store.paths()
        for path in paths:
            if path not in self._chunk_totals:
                self._chunk_totals[path] = tally_chunk(path)
        return combine(self._chunk_totals[path] for path in paths)

    def observe(self, batch: BatchObject, dataset: str) -> Observation:
        validation = read_validation(self.layout, dataset)
        ingest_failed = None
        if validation is None:
            ingest = latest_run(self.instance, REQUESTS_ASSET, dataset)
            if ingest and ingest.dagster_run.status == DagsterRunStatus.FAILURE \
                    and ingest.dagster_run.tags.get(WILL_RETRY_TAG) != "true":
                ingest_failed = f"the validation run {ingest.dagster_run.run_id} failed; see its logs in Dagster"
        if validation is None or not validation.ok:
            return Observation(validation=validation, ingest_failed=ingest_failed, run_status=None,
                               run_will_retry=False, run_id=None, completed=0, failed=0, input_tokens=0,
                               output_tokens=0, output_ready=False)
        model = validation.model
        paths = self.layout.responses(dataset, model)
        latest = latest_run(self.instance, RESPONSES_ASSET, dataset_model_key(dataset, model))
        # Only the batch's own run decides its failure; another run of the same cell (another batch's,
        # a deterministic resubmission, or one launched from the UI) is waited for while active, and
        # reused once it succeeded.
        own = latest_tagged_run(self.instance, {BATCH_ID_TAG: batch.id})
        output_ready = paths.output.exists() and run_status(latest) == "SUCCESS"
        tracked = own if own and (own.dagster_run.run_id == latest.dagster_run.run_id or not output_ready) else None
        waiting_on_other = latest if is_active(latest) else None
        totals = self._totals(ChunkStore(paths.chunks))
        shown = tracked or waiting_on_other
        return Observation(
            validation=validation, ingest_failed=None,
            run_status=run_status(shown),
            run_will_retry=bool(shown and shown.dagster_run.tags.get(WILL_RETRY_TAG) == "true"),
            run_id=shown.dagster_run.run_id if shown else None,
            completed=totals.succeeded, failed=totals.failed,
            input_tokens=totals.prompt_tokens, output_tokens=totals.completion_tokens,
            output_ready=output_ready, run_is_own=tracked is not None,
        )

    def _refresh(self, batch_id: str) -> BatchObject:
        with self._lock:
            batch, dataset = self._stored(batch_id)
            if batch.status in TERMINAL_STATUSES:
                return batch
            seen = self.observe(batch, dataset)
            decision = decide(batch, seen, _now())
            if decision.stop_run and seen.run_is_own:
                self._stop_run(dataset, decision.batch.model, seen)
            result = self._finish(decision, dataset) if decision.finish else decision.batch
            if result != batch:
                self.store.save_batch(result)
            return result

    def _stop_run(self, dataset: str, model: str, seen: Observation) -> None:
        if seen.run_status in {"QUEUED", "NOT_STARTED"}:
            self.instance.run_coordinator.cancel_run(seen.run_id)
        else:
            self.layout.responses(dataset, model).stop_request.touch()

    def _finish(self, decision: Decision, dataset: str) -> BatchObject:
        batch = decision.batch.model_copy(update={"status": "finalizing", "finalizing_at": _now()})
        self.store.save_batch(batch)
        if batch.model is None:  # cancelled or expired before validation: nothing to hand back
            output_id = error_id = None
        elif decision.finish is Finish.COMPLETED:
            output_id, error_id = self._publish_partition_files(batch, dataset)
        else:
            output_id, error_id = self._publish_partial_files(batch, dataset, decision.finish is Finish.EXPIRED)
        stamp = {Finish.COMPLETED: "completed_at", Finish.CANCELLED: "cancelled_at", Finish.EXPIRED: "expired_at"}
        return batch.model_copy(update={"status": decision.finish.value, stamp[decision.finish]: _now(),
                                        "output_file_id": output_id, "error_file_id": error_id})

    def _output_file(self, batch: BatchObject, kind: str, fill) -> str | None:
        file_id, path = self.new_upload_path()
        with atomic_path(path) as temp:
            fill(temp)
        if path.stat().st_size == 0:
            path.unlink()
            return None
        return self.add_file(file_id, path, f"{batch.id}_{kind}.jsonl", "batch_output").id

    def _publish_partition_files(self, batch: BatchObject, dataset: str) -> tuple[str | None, str | None]:
        paths = self.layout.responses(dataset, batch.model)
        return (self._output_file(batch, "output", lambda temp: shutil.copyfile(paths.output, temp)),
                self._output_file(batch, "error", lambda temp: shutil.copyfile(paths.errors, temp)))

    def _publish_partial_files(self, batch: BatchObject, dataset: str, expired: bool) -> tuple[str | None, str | None]:
        store = ChunkStore(self.layout.responses(dataset, batch.model).chunks)
        unfinished = self._unfinished_lines(dataset, store) if expired else []
        staging = self.files_dir / f".{batch.id}-{uuid.uuid4().hex[:8]}-staging"
        staging.mkdir()
        try:
            write_output_files(store, staging / "output.jsonl", staging / "errors.jsonl", unfinished)
            return (self._output_file(batch, "output", lambda t: os.replace(staging / "output.jsonl", t)),
                    self._output_file(batch, "error", lambda t: os.replace(staging / "errors.jsonl", t)))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _unfinished_lines(self, dataset: str, store: ChunkStore) -> list[BatchOutputLine]:
        requests = self.layout.dataset(dataset).requests
        if not requests.exists():
            return []
        return [BatchOutputLine(id=new_id("batch_req_"), custom_id=row.custom_id, response=None,
                                error=BatchLineError(code="batch_expired", message=_EXPIRED_MESSAGE))
                for row in iter_requests(requests, skip=store.done_rows())]

    def queue(self) -> list[QueueEntry]:
        """Running then queued GPU runs, however launched; queued ones in the daemon's order."""
        queue = gpu_queue(self.instance)
        queued = sorted(queue.queued, key=lambda r: (-tag_priority(r.dagster_run.tags.get(PRIORITY_TAG)),
                                                     r.create_timestamp))
        entries = []
        for position, record in enumerate(queue.running + queued):
            run = record.dagster_run
            partition = partition_of(run)
            if partition is None:
                continue
            dataset, model = partition
            validation = read_validation(self.layout, dataset)
            entries.append(QueueEntry(
                batch_id=run.tags.get(BATCH_ID_TAG), dataset=dataset, model=model, run_id=run.run_id,
                status="queued" if run.status == DagsterRunStatus.QUEUED else "running", position=position,
                priority=tag_priority(run.tags.get(PRIORITY_TAG)), reason=run.tags.get(REASON_TAG),
                rows_done=ChunkStore(self.layout.responses(dataset, model).chunks).row_count(),
                rows_total=validation.requests if validation else None,
            ))
        return entries
