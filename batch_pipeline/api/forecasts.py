"""Finish times on batch objects (extension fields) and the check, when a batch is created, that the
queue can finish it within its completion window."""

import json
import time
from pathlib import Path

from dagster import DagsterInstance

from batch_pipeline.api.models import BatchObject
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.queue.eta import PlannedCell
from batch_pipeline.queue.view import queue_forecast

_ACTIVE = frozenset({"validating", "in_progress"})


def input_shape(path: Path) -> tuple[int, str | None]:
    """The request count and the first line's model, read roughly: validation reports what is wrong."""
    rows, model = 0, None
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            rows += 1
            if model is None:
                try:
                    model = str(json.loads(raw)["body"]["model"])
                except (ValueError, KeyError, TypeError, RecursionError):
                    pass
    return rows, model


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


class BatchForecasts:
    def __init__(self, instance: DagsterInstance, layout: DataLayout, slot_count: int, strict: bool = False):
        """`strict`: a batch expected to miss its window is refused instead of created with a warning."""
        self.instance, self.layout, self.slot_count, self.strict = instance, layout, slot_count, strict

    def window_warning(self, input_path: Path, deadline: float, now: float) -> str | None:
        """Why a new batch would miss `deadline` behind everything queued now; None if it would not."""
        rows, model = input_shape(input_path)
        if model is None or rows == 0:
            return None
        new = PlannedCell(run_id="(new batch)", model=model, rows_left=rows, running=False)
        _, plan = queue_forecast(self.instance, self.layout, now, self.slot_count, extra=new)
        if plan is None or plan.expected_completion_at <= deadline:
            return None
        return (f"expected to complete at {_iso(plan.expected_completion_at)} ({plan.basis} speed of {model}, "
                f"behind the GPU queue), after its completion window ends at {_iso(deadline)}")

    def annotate(self, batches: list[BatchObject]) -> list[BatchObject]:
        """Each active batch with the queue's expected start and finish of its GPU run, when it has one."""
        if not any(batch.status in _ACTIVE for batch in batches):
            return batches
        cells, _ = queue_forecast(self.instance, self.layout, time.time(), self.slot_count)
        by_batch = {cell.batch_id: cell for cell in cells if cell.batch_id and cell.expected_completion_at}
        return [batch.model_copy(update={"expected_start_at": int(cell.expected_start_at),
                                         "expected_completion_at": int(cell.expected_completion_at)})
                if batch.status in _ACTIVE and (cell := by_batch.get(batch.id)) else batch for batch in batches]
