"""How a batch's status follows what Dagster and the disk say. Pure: observation in, decision out."""

from dataclasses import dataclass
from enum import Enum

from batch_pipeline.api.models import TERMINAL_STATUSES, BatchErrors, BatchObject, BatchUsage, RequestCounts
from batch_pipeline.core.runs import ACTIVE_STATUSES
from batch_pipeline.intake.validation import LineError, ValidationReport
from batch_pipeline.protocol.usage import InputTokensDetails

_ACTIVE = frozenset(status.value for status in ACTIVE_STATUSES)
# A batch in one of these no longer wants the GPU run launched for it.
ABANDONED_STATUSES = frozenset({"cancelled", "expired", "failed"})
REFRESH_FAILED = "refresh_failed"


class Finish(Enum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Observation:
    validation: ValidationReport | None
    ingest_failed: str | None  # the ingest run failed for good without a validation report
    run_status: str | None  # latest GPU run of the batch's dataset x model partition
    run_will_retry: bool
    run_id: str | None
    completed: int
    failed: int
    input_tokens: int
    output_tokens: int
    output_ready: bool  # the partition's output files are complete
    run_is_own: bool = False  # the run was launched for this batch
    run_needed_by_others: bool = False  # another batch that still wants results shares the run
    cached_tokens: int = 0  # prompt tokens served from the prefix cache

    @property
    def run_active(self) -> bool:
        return self.run_status in _ACTIVE or (self.run_status == "FAILURE" and self.run_will_retry)


@dataclass(frozen=True)
class Decision:
    batch: BatchObject
    finish: Finish | None = None  # write the batch's files, then mark it with this status
    stop_run: bool = False  # ask the running GPU run to stop at its next chunk boundary


def _expired(batch: BatchObject, now: int) -> bool:
    return batch.expires_at is not None and now >= batch.expires_at


def wants_results(batch: BatchObject, now: int) -> bool:
    """Unfinished, not being cancelled and inside its window: a run it shares must go on."""
    return batch.status not in TERMINAL_STATUSES and batch.cancelling_at is None and not _expired(batch, now)


def _other_errors(batch: BatchObject) -> list[LineError]:
    return [error for error in (batch.errors.data if batch.errors else []) if error.code != REFRESH_FAILED]


def with_refresh_failure(batch: BatchObject, message: str) -> BatchObject:
    """The batch keeps its status; its `errors` say why it is not moving."""
    failure = LineError(code=REFRESH_FAILED, line=None, message=message)
    return batch.model_copy(update={"errors": BatchErrors(data=[*_other_errors(batch), failure])})


def _without_refresh_failure(batch: BatchObject) -> BatchObject:
    kept = _other_errors(batch)
    return batch.model_copy(update={"errors": BatchErrors(data=kept) if kept else None})


def _failed(batch: BatchObject, errors: list[LineError], now: int) -> Decision:
    return Decision(batch.model_copy(update={"status": "failed", "failed_at": now,
                                             "errors": BatchErrors(data=errors)}))


def _live_counts(batch: BatchObject, seen: Observation) -> BatchObject:
    total = seen.validation.requests if seen.validation else batch.request_counts.total
    return batch.model_copy(update={
        "request_counts": RequestCounts(total=total, completed=seen.completed, failed=seen.failed),
        "usage": BatchUsage(input_tokens=seen.input_tokens, output_tokens=seen.output_tokens,
                            input_tokens_details=InputTokensDetails(cached_tokens=seen.cached_tokens),
                            total_tokens=seen.input_tokens + seen.output_tokens),
    })


def decide(batch: BatchObject, seen: Observation, now: int) -> Decision:
    if batch.status in TERMINAL_STATUSES:
        return Decision(batch)
    batch = _without_refresh_failure(batch)  # getting this far, the refresh works again
    if seen.validation is not None and not seen.validation.ok:
        return _failed(batch, seen.validation.errors, now)
    if seen.ingest_failed:
        return _failed(batch, [LineError(code="validation_failed", line=None, message=seen.ingest_failed)], now)
    if seen.validation is not None and seen.validation.endpoint != batch.endpoint:
        return _failed(batch, [LineError(
            code="mismatched_endpoint", line=1, param="url",
            message=f"the file's requests are for '{seen.validation.endpoint}' but the batch was created for "
                    f"'{batch.endpoint}'")], now)
    batch = _live_counts(batch, seen)
    if seen.validation is not None and batch.model is None:
        batch = batch.model_copy(update={"model": seen.validation.model})
    if seen.output_ready and not seen.run_active:
        return Decision(batch, finish=Finish.COMPLETED)
    expired = _expired(batch, now)
    if batch.cancelling_at is not None or expired:
        if seen.run_active and seen.run_is_own and not seen.run_needed_by_others:
            return Decision(batch, stop_run=True)
        return Decision(batch, finish=Finish.EXPIRED if expired and batch.cancelling_at is None else Finish.CANCELLED)
    if seen.validation is None:
        return Decision(batch)
    if seen.run_status in {"FAILURE", "CANCELED"} and not seen.run_active:
        message = f"the generation run {seen.run_id} ended with {seen.run_status}; see its logs in Dagster"
        return _failed(batch, [LineError(code="run_failed", line=None, message=message)], now)
    if batch.status == "validating":
        batch = batch.model_copy(update={"status": "in_progress", "in_progress_at": now})
    return Decision(batch)
