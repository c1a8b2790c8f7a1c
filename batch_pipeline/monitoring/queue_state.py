"""The GPU queue at a glance: how many runs wait, for how long, and how fast the running ones go."""

import logging
import time

import pyarrow.parquet as pq
from dagster import DagsterInstance
from pydantic import BaseModel

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.intake.validation import read_validation
from batch_pipeline.queue.runs import gpu_queue, partition_of

logger = logging.getLogger(__name__)


class RunningRun(BaseModel):
    model: str
    rows_done: int  # on disk, resumed rows included
    rows_total: int | None
    rows_per_second: float  # rows this run wrote, over the time since it started


class QueueState(BaseModel):
    queued: int
    oldest_wait_seconds: float  # 0 when nothing waits
    running: list[RunningRun]


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


def rows_per_second(rows: int, started: float, now: float) -> float:
    return rows / max(now - started, 1e-6)


def queue_state(instance: DagsterInstance, layout: DataLayout, now: float | None = None) -> QueueState:
    now = time.time() if now is None else now
    queue = gpu_queue(instance)
    oldest = min((r.create_timestamp.timestamp() for r in queue.queued), default=None)
    running = []
    for record in queue.running:
        if (cell := partition_of(record.dagster_run)) is None:
            continue
        dataset, model = cell
        store = ChunkStore(layout.responses(dataset, model).chunks)
        started = record.start_time or now
        try:  # one cell whose files cannot be read must not take every other series with it
            validation = read_validation(layout, dataset)
            running.append(RunningRun(
                model=model, rows_done=store.row_count(), rows_total=validation.requests if validation else None,
                rows_per_second=rows_per_second(rows_written_since(store, started), started, now)))
        except Exception as exc:
            logger.warning("metrics leave out %s|%s: %s: %s", dataset, model, type(exc).__name__, exc)
    return QueueState(queued=len(queue.queued), oldest_wait_seconds=0.0 if oldest is None else max(now - oldest, 0.0),
                      running=running)
