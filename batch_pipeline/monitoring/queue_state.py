"""The GPU queue at a glance: how many runs wait, for how long, and how fast the running ones go."""

import time

from dagster import DagsterInstance
from pydantic import BaseModel

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.queue.view import queue_cells


class RunningRun(BaseModel):
    model: str
    rows_done: int  # on disk, resumed rows included
    rows_total: int | None
    rows_per_second: float  # rows this run wrote, over the time since it started


class QueueState(BaseModel):
    queued: int
    oldest_wait_seconds: float  # 0 when nothing waits
    running: list[RunningRun]


def queue_state(instance: DagsterInstance, layout: DataLayout, now: float | None = None) -> QueueState:
    """Cells whose files cannot be read are left out of the series, not out of the count."""
    now = time.time() if now is None else now
    cells = queue_cells(instance, layout, now)
    queued_at = [cell.queued_at for cell in cells if cell.status == "queued"]
    running = [RunningRun(model=cell.model, rows_done=cell.rows_done, rows_total=cell.rows_total,
                          rows_per_second=cell.rows_per_second)
               for cell in cells if cell.status == "running" and cell.problem is None]
    return QueueState(queued=len(queued_at), running=running,
                      oldest_wait_seconds=max(now - min(queued_at), 0.0) if queued_at else 0.0)
