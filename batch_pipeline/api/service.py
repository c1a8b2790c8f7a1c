"""The shim's behaviour behind the HTTP routes: files, batches, and their truthful status."""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import DagsterInstance, DagsterRunStatus, RunRecord

from batch_pipeline.api import clock, partial
from batch_pipeline.api.batch_locks import BatchBusy
from batch_pipeline.api.cell_cost import cell_cost
from batch_pipeline.api.chunk_tallies import ChunkTallies
from batch_pipeline.api.errors import ShimError
from batch_pipeline.api.files import FileService, no_such_file
from batch_pipeline.api.lifecycle import (
    ABANDONED_STATUSES,
    REFRESH_FAILED,
    Decision,
    Finish,
    Observation,
    decide,
    wants_results,
    with_refresh_failure,
)
from batch_pipeline.api.models import (
    TERMINAL_STATUSES,
    BatchCreate,
    BatchErrors,
    BatchObject,
    RefreshFailure,
    RequestCounts,
)
from batch_pipeline.api.partial import PartialOutput
from batch_pipeline.api.placement import place_batch_input
from batch_pipeline.api.publishing import BatchPublisher
from batch_pipeline.api.store import ShimStore
from batch_pipeline.api.store_engine import store_url
from batch_pipeline.api.webhooks import WebhookConfig, WebhookSender, transition_event
from batch_pipeline.api.windows import window_seconds
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.names import (
    BATCH_ID_TAG,
    REQUESTS_ASSET,
    RESPONSES_ASSET,
    WILL_RETRY_TAG,
)
from batch_pipeline.core.partitions import dataset_model_key
from batch_pipeline.core.registry import Registry, load_registry
from batch_pipeline.core.runs import active_gpu_runs, is_active, latest_run, latest_tagged_run
from batch_pipeline.core.stop_request import request_stop
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.results import CellLines
from batch_pipeline.intake.validation import LineError, read_validation
from batch_pipeline.protocol.batch import new_id
from batch_pipeline.queue.runs import partition_of

logger = logging.getLogger(__name__)

def run_status(record: RunRecord | None) -> str | None:
    return record.dagster_run.status.value if record else None


class ShimService:
    def __init__(self, layout: DataLayout, instance: DagsterInstance, completion_window_seconds: int,
                 max_upload_bytes: int, webhooks: WebhookConfig | None = None, postgres_url: str | None = None,
                 upload_expiry_seconds: int | None = None):
        """`postgres_url`: the store in that PostgreSQL (shared by API replicas) instead of SQLite.
        `upload_expiry_seconds`: the lifetime of an upload that sets no `expires_after` (None: until deleted)."""
        self.layout = layout
        self.upload_expiry_seconds = upload_expiry_seconds
        self.instance = instance
        self.completion_window_seconds = completion_window_seconds
        self.max_upload_bytes = max_upload_bytes
        self.store = ShimStore(store_url(layout, postgres_url))
        # None without a configured URL: then no event is recorded at all, so configuring one later
        # never announces old transitions.
        self.webhooks = WebhookSender(self.store, webhooks) if webhooks else None
        self.files = FileService(layout, self.store, shared=postgres_url is not None)
        self.publisher = BatchPublisher(layout, self.store, self.files)
        self._tallies = ChunkTallies()
        # Why the last refresh of each batch failed (None: the refresher as a whole).
        self._refresh_failures: dict[str | None, str] = {}
        # The batch the last refresh pass stopped at, its deadline reached: the next pass starts there.
        self._resume_at: str | None = None

    def registry(self) -> Registry:
        return load_registry(self.layout.registry)

    # Batches
    def create_batch(self, request: BatchCreate, warnings: list[str] | None = None,
                     fresh: bool = False) -> BatchObject:
        """`fresh`: generated afresh even when deterministic (placement.place_batch_input)."""
        file, path = self.files.get(request.input_file_id)
        if file.purpose != "batch":
            raise ShimError(400, f"File {file.id} has purpose '{file.purpose}'; batch inputs need 'batch'",
                            param="input_file_id", code="invalid_file_purpose")
        batch_id, registry = new_id("batch_"), self.registry()
        # Hashing, parsing and copying the input takes a while, so it holds no lock: placement writes
        # atomically and is idempotent, and two batches of the same content place the same bytes.
        try:
            dataset = place_batch_input(self.layout, path, file.filename, batch_id, registry, fresh=fresh)
        except FileNotFoundError:  # the file was deleted meanwhile
            raise no_such_file(file.id) from None
        now = clock.now()
        batch = BatchObject(id=batch_id, endpoint=request.endpoint, input_file_id=file.id,
                            completion_window=request.completion_window, status="validating",
                            created_at=now, metadata=request.metadata, warnings=warnings or None,
                            expires_at=now + window_seconds(request.completion_window, self.completion_window_seconds))
        retention = request.output_expires_after.seconds if request.output_expires_after else None
        if not self.store.add_batch(batch, dataset, now=clock.now(), output_expires_after=retention):
            raise no_such_file(file.id)  # deleted (or expired) while it was being placed
        return batch

    def _stored(self, batch_id: str) -> tuple[BatchObject, str]:
        found = self.store.batch(batch_id)
        if found is None:
            raise ShimError(404, f"No such Batch object: {batch_id}", param="batch_id", code="batch_not_found")
        return found

    @contextmanager
    def _holding(self, batch_id: str, wait: bool = True) -> Iterator[bool]:
        """One writer at a time per batch record: HTTP threads, the refresher, and other API replicas."""
        try:
            with self.store.batch_locks.hold(batch_id, wait=wait) as held:
                yield held
        except BatchBusy as exc:
            raise ShimError(503, f"{exc}; retry", param="batch_id", code="batch_busy", kind="server_error") from None

    def batch(self, batch_id: str) -> BatchObject:
        """A reader never waits for a writer: a batch being refreshed or cancelled elsewhere (perhaps stuck
        in a hung call) is shown as last stored."""
        return self._refresh(batch_id, wait=False) or self._stored(batch_id)[0]

    def partial_output(self, batch_id: str, after: int) -> PartialOutput:
        """The batch's answer lines so far: while it runs, what its chunks hold (as its request_counts
        say); once its files are written, exactly theirs."""
        self._refresh(batch_id)
        batch, dataset = self._stored(batch_id)
        if batch.output_file_id is None and batch.error_file_id is None:
            if batch.model is None:
                return PartialOutput(0, iter(()))
            return partial.running(self._tallies.cell_lines(self._chunks(dataset, batch.model)), after)
        files = []
        for file_id in filter(None, (batch.output_file_id, batch.error_file_id)):
            try:  # opened now, so retention cannot take it mid-stream
                files.append(self.files.get(file_id)[1].open("rb"))
            except (ShimError, FileNotFoundError):  # expired: its lines are gone with it
                pass
        return partial.finished(CellLines(self._chunks(dataset, batch.model)), files, after)

    def _chunks(self, dataset: str, model: str) -> ChunkStore:
        return ChunkStore(self.layout.responses(dataset, model).chunks).snapshot()

    def batches(self, limit: int, after: str | None) -> tuple[list[BatchObject], bool]:
        page = self.store.batches(limit + 1, after)
        return [self.batch(batch.id) for batch in page[:limit]], len(page) > limit

    def cancel(self, batch_id: str) -> BatchObject:
        with self._holding(batch_id):
            batch = self._refresh(batch_id)
            if batch.status in TERMINAL_STATUSES:
                raise ShimError(409, f"Cannot cancel a batch with status '{batch.status}'", param="batch_id",
                                code="batch_not_cancellable")
            if batch.cancelling_at is None:
                self.store.save_batch(batch.model_copy(update={"status": "cancelling", "cancelling_at": clock.now()}))
            return self._refresh(batch_id)

    def refresh_active(self, deadline: float | None = None) -> None:
        """Every unfinished batch, each on its own, then the runs no batch wants any more. Failures are
        logged and shown by `refresh_failures`, never raised: the refresher must keep going. Past
        `deadline` (time.monotonic) no further batch is taken up; the next pass starts with those left."""
        try:
            active = [batch.id for batch, _ in self.store.active_batches()]
            if self._resume_at in active:
                start = active.index(self._resume_at)
                active = active[start:] + active[:start]
            self._resume_at = None
            for done, batch_id in enumerate(active):
                if done and deadline is not None and time.monotonic() >= deadline:  # at least one per pass
                    self._resume_at = batch_id
                    logger.warning("the refresh pass reached its deadline after %d of %d batches; the next pass "
                                   "starts with the rest", done, len(active))
                    break
                try:
                    self._refresh(batch_id, wait=False)  # one held elsewhere is being refreshed there
                except Exception as exc:  # e.g. the shim's database, failing for this batch only
                    self._record_failure(batch_id, exc)
            self._stop_abandoned_runs()
        except Exception as exc:
            self._record_failure(None, exc)
        else:
            self._refresh_failures.pop(None, None)

    def refresh_failures(self) -> list[RefreshFailure]:
        return [RefreshFailure(batch_id=batch_id, message=message)
                for batch_id, message in self._refresh_failures.copy().items()]

    def _record_failure(self, batch_id: str | None, exc: Exception) -> str:
        """Logs the failure (with its traceback the first time) and keeps it for /health."""
        message = f"{type(exc).__name__}: {exc}"
        repeated = self._refresh_failures.get(batch_id) == message
        logger.warning("refreshing %s failed%s: %s", f"batch {batch_id}" if batch_id else "the batches",
                       " again" if repeated else "", message, exc_info=not repeated)
        self._refresh_failures[batch_id] = message
        return message

    # Status
    def _wanted_by_another(self, dataset: str, batch_id: str, now: int) -> bool:
        """Whether a batch other than `batch_id` still waits for the results of `dataset`."""
        return any(other.id != batch_id and wants_results(other, now)
                   for other, _ in self.store.active_batches(dataset))

    def observe(self, batch: BatchObject, dataset: str, now: int) -> Observation:
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
        chunks = ChunkStore(paths.chunks).snapshot()
        totals = self._tallies.cell_lines(chunks).totals
        # Whatever run finished it, even one a fresh instance database has no record of; a row index
        # for every request, not just as many rows.
        output_ready = not is_active(latest) and paths.output.exists() and paths.errors.exists() \
            and totals.rows >= validation.requests and chunks.covers(validation.requests)
        tracked = own if own and (own.dagster_run.run_id == latest.dagster_run.run_id or not output_ready) else None
        waiting_on_other = latest if is_active(latest) else None
        shown = tracked or waiting_on_other
        return Observation(
            validation=validation, ingest_failed=None,
            run_status=run_status(shown),
            run_will_retry=bool(shown and shown.dagster_run.tags.get(WILL_RETRY_TAG) == "true"),
            run_id=shown.dagster_run.run_id if shown else None,
            completed=totals.succeeded, failed=totals.failed,
            input_tokens=totals.prompt_tokens, output_tokens=totals.completion_tokens,
            cached_tokens=totals.cached_tokens,
            output_ready=output_ready, run_is_own=tracked is not None,
            run_needed_by_others=tracked is not None and self._wanted_by_another(dataset, batch.id, now),
        )

    def _refresh(self, batch_id: str, wait: bool = True) -> BatchObject | None:
        """The batch as Dagster and the disk say it is now. If that fails, the batch stays as it was, with
        the failure in its `errors`, and the next refresh tries again. None, without `wait`, when another
        thread or replica holds the batch."""
        with self._holding(batch_id, wait=wait) as held:
            if not held:
                return None
            batch, dataset = self._stored(batch_id)
            if batch.status in TERMINAL_STATUSES:
                return batch
            try:
                result = self._advance(batch, dataset)
            except Exception as exc:
                message = self._record_failure(batch_id, exc)
                if batch.expires_at is not None and clock.now() >= batch.expires_at:
                    return self._expire_unreadable(batch, dataset, message)
                noted = with_refresh_failure(batch, f"the shim could not bring this batch up to date ({message}); "
                                                    "it retries at every refresh, see the shim's log")
                if noted != batch:
                    self.store.save_batch(noted)
                return noted
            self._refresh_failures.pop(batch_id, None)
            return result

    def _expire_unreadable(self, batch: BatchObject, dataset: str, message: str) -> BatchObject:
        """A batch whose state cannot be read still ends when its window does: expired, with whatever
        answers can be read, and the reason in its `errors`."""
        output_id = error_id = None
        if batch.model is not None:
            try:
                output_id, error_id = self.publisher.partial_files(batch, dataset, Finish.EXPIRED)[:2]
            except Exception as exc:
                logger.warning("batch %s expires without its answers: %s: %s", batch.id, type(exc).__name__, exc)
        kept = [error for error in (batch.errors.data if batch.errors else []) if error.code != REFRESH_FAILED]
        failure = LineError(code="batch_unreadable", line=None,
                            message=f"the batch's files could not be read ({message}); it expired")
        expired = batch.model_copy(update={
            "status": "expired", "expired_at": clock.now(), "output_file_id": output_id, "error_file_id": error_id,
            "errors": BatchErrors(data=[*kept, failure])})
        self.store.save_batch(expired, event=transition_event(batch, expired) if self.webhooks else None)
        self._refresh_failures.pop(batch.id, None)  # shown in the batch's errors from now on
        self._forget_if_finished(expired, dataset)
        return expired

    def _advance(self, batch: BatchObject, dataset: str) -> BatchObject:
        now = clock.now()
        seen = self.observe(batch, dataset, now)
        decision = decide(batch, seen, now)
        if decision.stop_run:
            self._stop_run(seen.run_id, seen.run_status, dataset, decision.batch.model)
        result = self._finish(decision, dataset) if decision.finish else decision.batch
        if result != batch:
            event = transition_event(batch, result) if self.webhooks else None
            self.store.save_batch(result, event=event)
        self._forget_if_finished(result, dataset)
        return result

    def _forget_if_finished(self, batch: BatchObject, dataset: str) -> None:
        """A twin batch still reading the cell tallies it again, once."""
        if batch.status in TERMINAL_STATUSES and batch.model is not None:
            self._tallies.forget(self.layout.responses(dataset, batch.model).chunks)

    def _stop_run(self, run_id: str, status: str, dataset: str, model: str) -> None:
        """A queued run leaves the queue; a running one stops at its next chunk boundary."""
        if status in {"QUEUED", "NOT_STARTED"}:
            self.instance.run_coordinator.cancel_run(run_id)
        elif status in {"STARTING", "STARTED"}:
            request_stop(self.layout.responses(dataset, model).stop_request, run_id)

    def _stop_abandoned_runs(self) -> None:
        """Stops GPU runs launched for a batch that no longer wants them (e.g. a cancel that raced the
        run's launch), unless another batch waits for the same results."""
        now = clock.now()
        for record in active_gpu_runs(self.instance):
            run, cell = record.dagster_run, partition_of(record.dagster_run)
            owner = self.store.batch(run.tags[BATCH_ID_TAG]) if BATCH_ID_TAG in run.tags else None
            if cell is None or owner is None or owner[0].status not in ABANDONED_STATUSES:
                continue
            dataset, model = cell
            if not self._wanted_by_another(dataset, owner[0].id, now):
                self._stop_run(run.run_id, run.status.value, dataset, model)

    def _finish(self, decision: Decision, dataset: str) -> BatchObject:
        batch = decision.batch
        if batch.model is None:  # cancelled or expired before validation: nothing to hand back
            output_id = error_id = None
        elif decision.finish is Finish.COMPLETED:
            output_id, error_id = self.publisher.partition_files(batch, dataset)
            batch = batch.model_copy(update={"cost": cell_cost(self.instance, dataset, batch.model)})
        else:
            output_id, error_id, totals = self.publisher.partial_files(batch, dataset, decision.finish)
            # As the files say: every request is a completed line or a failed one (its own error, or
            # never run), so completed + failed = total.
            batch = batch.model_copy(update={"request_counts": RequestCounts(
                total=totals.rows, completed=totals.succeeded, failed=totals.failed)})
        # Recorded only once the files are durable: a failure above leaves the batch as it was, to retry.
        batch = batch.model_copy(update={"status": "finalizing", "finalizing_at": clock.now(),
                                         "output_file_id": output_id, "error_file_id": error_id})
        self.store.save_batch(batch)
        stamp = {Finish.COMPLETED: "completed_at", Finish.CANCELLED: "cancelled_at", Finish.EXPIRED: "expired_at"}
        return batch.model_copy(update={"status": decision.finish.value, stamp[decision.finish]: clock.now()})
