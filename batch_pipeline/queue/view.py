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
from batch_pipeline.queue.runs import gpu_queue, partition_of, tag_priority

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
                "rows_per_second": speed}
    except Exception as exc:
        logger.warning("the queue shows %s|%s without progress: %s: %s", dataset, model, type(exc).__name__, exc)
        return {"rows_done": None, "rows_total": None, "rows_per_second": None,
                "problem": f"{type(exc).__name__}: {exc}"}


def queue_cells(instance: DagsterInstance, layout: DataLayout, now: float | None = None) -> list[QueueCell]:
    """Running then queued GPU runs; queued ones in the order the daemon dequeues them."""
    now = time.time() if now is None else now
    queue = gpu_queue(instance)
    queued = sorted(queue.queued, key=lambda r: (-tag_priority(r.dagster_run.tags.get(PRIORITY_TAG)),
                                                 r.create_timestamp))
    cells = []
    for position, record in enumerate(queue.running + queued):
        run = record.dagster_run
        if (partition := partition_of(run)) is None:
            continue
        dataset, model = partition
        cells.append(QueueCell(
            run_id=run.run_id, batch_id=run.tags.get(BATCH_ID_TAG), dataset=dataset, model=model,
            status="queued" if run.status == DagsterRunStatus.QUEUED else "running", position=position,
            priority=tag_priority(run.tags.get(PRIORITY_TAG)), reason=run.tags.get(REASON_TAG),
            queued_at=record.create_timestamp.timestamp(), **_progress(layout, record, dataset, model, now)))
    return cells
