"""Retrying a finished batch's failed lines as a child batch, and the merged results of a retry chain.

Our extensions (OpenAI has neither): the child is an ordinary batch of the parent's original request
lines for the failed custom_ids. `metadata` links them both ways: `retry_of` on the child, `retried_by`
on the parent (its newest child); the merged results follow `retried_by`.
"""

import json
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict

from batch_pipeline.api.errors import ShimError
from batch_pipeline.api.models import MAX_METADATA_PAIRS, TERMINAL_STATUSES, BatchCreate, BatchObject, ExpiresAfter
from batch_pipeline.api.service import ShimService
from batch_pipeline.core.storage import atomic_path
from batch_pipeline.protocol.batch import BatchOutputLine

RETRY_OF = "retry_of"
RETRIED_BY = "retried_by"


class RetryCreate(BaseModel):
    """The body of `POST /v1/batches/{id}/retry`; without `codes`, every line of the error file."""

    model_config = ConfigDict(extra="forbid")

    codes: list[str | int] | None = None


# Pure: which lines, which metadata, which answer wins.
def line_codes(line: BatchOutputLine) -> set[str]:
    """What a `codes` entry can name: the HTTP status and the error codes (`batch_expired`, `invalid_value`)."""
    codes = {line.error.code} if line.error else set()
    if line.response is not None:
        codes.add(str(line.response.status_code))
        error = line.response.body.get("error")
        if isinstance(error, dict) and error.get("code"):
            codes.add(str(error["code"]))
    return codes


def failed_ids(error_lines: Iterable[BatchOutputLine], codes: Iterable[str | int] | None) -> set[str]:
    wanted = None if codes is None else {str(code) for code in codes}
    return {line.custom_id for line in error_lines if wanted is None or line_codes(line) & wanted}


def original_lines(input_lines: Iterable[bytes], wanted: set[str]) -> Iterator[bytes]:
    """The input lines (as the user wrote them) of the `wanted` custom_ids."""
    for raw in input_lines:
        if raw.strip() and json.loads(raw).get("custom_id") in wanted:  # a validated input: every line an object
            yield raw if raw.endswith(b"\n") else raw + b"\n"


def check_room(metadata: dict[str, str] | None) -> None:
    """Refuses a retry when linking the parent to it would pass OpenAI's metadata limit."""
    metadata = metadata or {}
    if RETRIED_BY not in metadata and len(metadata) >= MAX_METADATA_PAIRS:
        raise ShimError(400, f"The batch's metadata already has {len(metadata)} pairs, OpenAI's limit of "
                             f"{MAX_METADATA_PAIRS}: there is no room for '{RETRIED_BY}', which links it to its "
                             "retry", param="metadata", code="metadata_limit")


def parent_metadata(metadata: dict[str, str] | None, child_id: str) -> dict[str, str]:
    check_room(metadata)
    return {**(metadata or {}), RETRIED_BY: child_id}


def child_metadata(parent: BatchObject) -> dict[str, str]:
    """The parent's own metadata, linked back to it (never its link to an earlier child)."""
    kept = {key: value for key, value in (parent.metadata or {}).items() if key != RETRIED_BY}
    return {**kept, RETRY_OF: parent.id}


def newest_attempts(parent_failed: Iterable[str], retries: Iterable[Iterable[tuple[str, bool]]]) -> dict[str, int]:
    """For each retried custom_id, the level (1: the first retry) of the newest attempt that ran it.
    `retries`: each level's (custom_id, failed) lines. A level counts only for the lines the level
    before failed, so each custom_id has one answer whatever the metadata claims."""
    open_ids, newest = set(parent_failed), {}
    for level, lines in enumerate(retries, start=1):
        failed_again = set()
        for custom_id, failed in lines:
            if custom_id in open_ids:
                newest[custom_id] = level
                if failed:
                    failed_again.add(custom_id)
        open_ids = failed_again
    return newest


def merge(levels: Iterable[Iterable[tuple[str, bytes]]], newest: dict[str, int]) -> Iterator[bytes]:
    """Each level's (custom_id, line) pairs, the parent first: the line of each custom_id's newest attempt."""
    for level, lines in enumerate(levels):
        for custom_id, raw in lines:
            if newest.get(custom_id, 0) == level:
                yield raw


# Against the service.
def _terminal(service: ShimService, batch_id: str, doing: str) -> BatchObject:
    batch = service.batch(batch_id)
    if batch.status not in TERMINAL_STATUSES:
        raise ShimError(409, f"Batch {batch_id} is '{batch.status}': only a finished batch (completed, failed, "
                             f"expired or cancelled) can {doing}; wait for it, or cancel it", param="batch_id",
                        code="batch_not_finished")
    return batch


def _open(service: ShimService, batch: BatchObject, file_id: str) -> BinaryIO:
    """Open at once: retention may delete the file meanwhile."""
    try:
        return service.files.get(file_id)[1].open("rb")
    except (ShimError, FileNotFoundError):
        raise ShimError(409, f"File {file_id} of batch {batch.id} has expired or was deleted: its lines are gone",
                        param="batch_id", code="batch_file_unavailable") from None


def _lines(handle: BinaryIO) -> Iterator[tuple[BatchOutputLine, bytes]]:
    handle.seek(0)
    for raw in handle:
        if raw.strip():
            yield BatchOutputLine.model_validate_json(raw), raw


def _outcomes(handles: list[BinaryIO]) -> Iterator[tuple[str, bool]]:
    """(custom_id, failed) of each line of a batch's files."""
    for handle in handles:
        for line, _ in _lines(handle):
            yield line.custom_id, line.response is None or line.response.status_code != 200


def _raw_lines(handles: list[BinaryIO]) -> Iterator[tuple[str, bytes]]:
    for handle in handles:
        for line, raw in _lines(handle):
            yield line.custom_id, raw


def _retry_input(service: ShimService, parent: BatchObject, wanted: set[str]) -> str:
    """A new batch input file of the parent's original lines for `wanted`; its id."""
    dataset = service.store.batch(parent.id)[1]
    source = service.layout.dataset(dataset).input
    file_id, path = service.files.new_upload_path()
    try:
        with source.open("rb") as lines, atomic_path(path) as temp, temp.open("wb") as out:
            out.writelines(original_lines(lines, wanted))
    except FileNotFoundError:
        raise ShimError(409, f"The input of batch {parent.id} is no longer on disk ({source.parent.name})",
                        param="batch_id", code="batch_input_unavailable") from None
    try:
        return service.files.add(file_id, path, f"{parent.id}_retry.jsonl", "batch",
                                 expires_after_seconds=service.upload_expiry_seconds).id
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def retry(service: ShimService, batch_id: str, codes: list[str | int] | None) -> BatchObject:
    """A child batch of `batch_id`'s failed lines (those with `codes`, or all), linked both ways. Placing
    the child's input takes a while, so the parent is held only to record the link."""
    parent = _terminal(service, batch_id, "be retried")
    check_room(parent.metadata)
    if parent.error_file_id is None:
        why = " (its input failed validation: see its errors)" if parent.status == "failed" else ""
        raise ShimError(400, f"Batch {batch_id} has no failed lines to retry{why}", param="batch_id",
                        code="nothing_to_retry")
    with _open(service, parent, parent.error_file_id) as errors:
        wanted = failed_ids((line for line, _ in _lines(errors)), codes)
    if not wanted:
        raise ShimError(400, f"No line of batch {batch_id} failed with the codes {codes}: nothing to retry",
                        param="codes", code="nothing_to_retry")
    retention = service.store.output_expires_after(parent.id)
    input_file_id = _retry_input(service, parent, wanted)
    try:
        child = service.create_batch(BatchCreate(
            input_file_id=input_file_id, endpoint=parent.endpoint, completion_window=parent.completion_window,
            metadata=child_metadata(parent),
            output_expires_after=ExpiresAfter(anchor="created_at", seconds=retention) if retention else None),
            fresh=True)
    except BaseException:
        service.files.delete(input_file_id)  # no batch uses it: an upload nobody made
        raise
    with service._holding(batch_id):  # one writer of the parent's record at a time
        parent = service.store.batch(batch_id)[0]
        service.store.save_batch(parent.model_copy(update={"metadata": parent_metadata(parent.metadata, child.id)}))
    return child


def _chain(service: ShimService, parent: BatchObject) -> list[BatchObject]:
    """The parent, then each newest retry that has finished; an unfinished one ends the chain."""
    chain = [parent]
    while (child_id := (chain[-1].metadata or {}).get(RETRIED_BY)) and service.store.batch(child_id) \
            and child_id not in {batch.id for batch in chain}:  # metadata a user wrote may loop
        child = service.batch(child_id)
        if child.status not in TERMINAL_STATUSES or (child.metadata or {}).get(RETRY_OF) != chain[-1].id:
            break
        chain.append(child)
    return chain


def merged_results(service: ShimService, batch_id: str) -> Iterator[bytes]:
    """One line per custom_id of the batch: its answer, or the newest finished retry's. Checked (and
    every file opened) before the first line is sent, so a refusal is an error, not a broken stream."""
    chain = _chain(service, _terminal(service, batch_id, "have merged results"))
    stack = ExitStack()
    try:
        levels = [[stack.enter_context(_open(service, batch, file_id))
                   for file_id in (batch.output_file_id, batch.error_file_id) if file_id] for batch in chain]
        parent_errors = [levels[0][-1]] if chain[0].error_file_id else []
        newest = newest_attempts((custom_id for custom_id, _ in _outcomes(parent_errors)),
                                 (_outcomes(handles) for handles in levels[1:]))
    except BaseException:
        stack.close()
        raise

    def stream() -> Iterator[bytes]:
        with stack:
            yield from merge((_raw_lines(handles) for handles in levels), newest)

    return stream()
