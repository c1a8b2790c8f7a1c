"""`/v1/batches`: creating, listing, reading and cancelling batches; our extensions: their answers so far,
retrying the failed lines and their merged results (api.retries)."""

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from batch_pipeline.api import clock, retries
from batch_pipeline.api.dependencies import Forecasts, Service
from batch_pipeline.api.errors import ShimError
from batch_pipeline.api.models import BatchCreate, BatchList, BatchObject
from batch_pipeline.api.partial import LINES_HEADER
from batch_pipeline.api.windows import window_seconds
from batch_pipeline.core.registry import RegistryError

router = APIRouter(prefix="/v1/batches")


@router.post("", response_model=BatchObject)
def create_batch(service: Service, forecasts: Forecasts, body: BatchCreate):
    _, path = service.files.get(body.input_file_id)
    now = clock.now()
    warning = forecasts.window_warning(path, now + window_seconds(body.completion_window,
                                                                  service.completion_window_seconds), now)
    if warning and forecasts.strict:
        raise ShimError(400, f"The batch would miss its completion window '{body.completion_window}': {warning}",
                        param="completion_window", code="completion_window_unmeetable")
    try:
        return service.create_batch(body, warnings=[warning] if warning else None)
    except RegistryError as exc:
        raise ShimError(500, str(exc), kind="server_error") from None


@router.get("", response_model=BatchList)
def list_batches(service: Service, forecasts: Forecasts, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                 after: str | None = None):
    data, has_more = service.batches(limit, after)
    data = forecasts.annotate(data)
    return BatchList(data=data, has_more=has_more, first_id=data[0].id if data else None,
                     last_id=data[-1].id if data else None)


@router.get("/{batch_id}", response_model=BatchObject)
def retrieve_batch(service: Service, forecasts: Forecasts, batch_id: str):
    return forecasts.annotate([service.batch(batch_id)])[0]


@router.post("/{batch_id}/cancel", response_model=BatchObject)
def cancel_batch(service: Service, batch_id: str):
    return service.cancel(batch_id)


@router.post("/{batch_id}/retry", response_model=BatchObject)
def retry_batch(service: Service, batch_id: str, body: retries.RetryCreate | None = None):
    try:
        return retries.retry(service, batch_id, body.codes if body else None)
    except RegistryError as exc:
        raise ShimError(500, str(exc), kind="server_error") from None


@router.get("/{batch_id}/results", responses={200: {"content": {"application/jsonl": {}}}})
def batch_results(service: Service, batch_id: str):
    return StreamingResponse(retries.merged_results(service, batch_id), media_type="application/jsonl")


@router.get("/{batch_id}/partial_output", responses={200: {"content": {"application/jsonl": {}}}})
def partial_output(service: Service, batch_id: str, after: Annotated[int, Query(ge=0)] = 0):
    """The answer lines finished so far, after the first `after`; the header says how many there are."""
    found = service.partial_output(batch_id, after)
    return StreamingResponse(found.body, media_type="application/jsonl", headers={LINES_HEADER: str(found.lines)})
