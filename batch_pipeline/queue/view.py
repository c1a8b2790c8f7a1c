"""The GPU queue as its cells, however each run was launched: what `/v1/queue` lists and `/metrics` counts."""

import logging
import time
from typing import Literal

import pyarrow.parquet as pq
from dagster import DagsterInstance, DagsterRunStatus, RunRecord
from pydantic import BaseModel

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.names import BATCH_ID_TAG, PRIORITY_TAG, REASON_TAG
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.intake.validation import read_validation
from batch_pipeline.queue.eta import Forecast, PlannedCell, forecast
from batch_pipeline.queue.runs import gpu_queue, partition_of, tag_priority
from batch_pipeline.queue.speeds import measured_speeds

logger = logging.getLogger(__name__)


class QueueCell(BaseModel):
    run_id: str
    batch_id: str | None
    dataset: str
    model: str
    status: Literal["queued", "running"]
    position: int
    # Higher goes first; set by the queue policy (model grouping, aging, user priority).
    priority: int
    reason: str | None
    queued_at: float
    rows_done: int | None  # on disk, resumed rows included; None when the cell's files cannot be read
    rows_total: int | None
    rows_per_second: float | None  # a running cell's rows written by this run, over its time so far
    problem: str | None = None
    # Unix times from the queue played forward at each model's measured speed (queue.eta); None when
    # the cell's size is unknown. `eta_basis` says what the speed came from.
    expected_start_at: float | None = None
    expected_completion_at: float | None = None
    eta_basis: str | None = None


def rows_written_since(store: ChunkStore, since: float) -> int:
    """Rows in the chunks written at or after `since` (a resumed run's earlier chunks are older)."""
    rows = 0
    for path in store.paths():
        try:
            if path.stat().st_mtime >= since:
                rows += pq.ParquetFile(path).metadata.num_rows
        except OSError:  # moved to the quarantine meanwhile
            continue
    return rows


def _progress(layout: DataLayout, record: RunRecord, dataset: str, model: str, now: float) -> dict:
    """A cell's rows done, requested and (running) per second; a cell whose files cannot be read is
    listed with the reason, so one broken cell never hides the others."""
    try:
        validation = read_validation(layout, dataset)
        store = ChunkStore(layout.responses(dataset, model).chunks)
        speed = None
        if record.dagster_run.status != DagsterRunStatus.QUEUED:
            started = record.start_time or now
            speed = rows_written_since(store, started) / max(now - started, 1e-6)
        return {"rows_done": store.row_count(), "rows_total": validation.requests if validation else None,
                "rows_per_second": speed, "max_tokens_per_row": validation.max_tokens_per_row if validation else None}
    except Exception as exc:
        logger.warning("the queue shows %s|%s without progress: %s: %s", dataset, model, type(exc).__name__, exc)
        return {"rows_done": None, "rows_total": None, "rows_per_second": None, "max_tokens_per_row": None,
                "problem": f"{type(exc).__name__}: {exc}"}


def queue_cells(instance: DagsterInstance, layout: DataLayout, now: float | None = None,
                slot_count: int = 1) -> list[QueueCell]:
    """Running then queued GPU runs; queued ones in the order the daemon dequeues them, each with its
    expected start and finish."""
    return queue_forecast(instance, layout, time.time() if now is None else now, slot_count)[0]


def queue_forecast(instance: DagsterInstance, layout: DataLayout, now: float, slot_count: int,
                   extra: PlannedCell | None = None) -> tuple[list[QueueCell], Forecast | None]:
    """The queue's cells, and the forecast of `extra` (a batch not yet queued) if it joined the end."""
    queue = gpu_queue(instance, slot_count)
    queued = sorted(queue.queued, key=lambda r: (-tag_priority(r.dagster_run.tags.get(PRIORITY_TAG)),
                                                 r.create_timestamp))
    cells, plan, started_at = [], [], {}
    for position, record in enumerate(queue.running + queued):
        run = record.dagster_run
        if (partition := partition_of(run)) is None:
            continue
        dataset, model = partition
        progress = _progress(layout, record, dataset, model, now)
        max_tokens_per_row = progress.pop("max_tokens_per_row")
        cell = QueueCell(
            run_id=run.run_id, batch_id=run.tags.get(BATCH_ID_TAG), dataset=dataset, model=model,
            status="queued" if run.status == DagsterRunStatus.QUEUED else "running", position=position,
            priority=tag_priority(run.tags.get(PRIORITY_TAG)), reason=run.tags.get(REASON_TAG),
            queued_at=record.create_timestamp.timestamp(), **progress)
        cells.append(cell)
        if cell.rows_total is not None and cell.rows_done is not None:
            plan.append(PlannedCell(run_id=run.run_id, model=model, rows_left=max(cell.rows_total - cell.rows_done, 0),
                                    running=cell.status == "running", live_rows_per_second=cell.rows_per_second or None,
                                    max_tokens_per_row=max_tokens_per_row))
            started_at[run.run_id] = record.start_time or now
    if extra is not None:
        plan.append(extra)
    if not plan:
        return cells, None
    plans = forecast(plan, measured_speeds(instance), [slot.model for slot in queue.slots], now, started_at)
    cells = [cell.model_copy(update={"expected_start_at": round(plans[cell.run_id].expected_start_at, 1),
                                     "expected_completion_at": round(plans[cell.run_id].expected_completion_at, 1),
                                     "eta_basis": plans[cell.run_id].basis})
             if cell.run_id in plans else cell for cell in cells]
    return cells, plans.get(extra.run_id) if extra is not None else None
