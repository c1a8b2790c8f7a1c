"""The GPU queue as Dagster run records, and the tags that carry the policy's decisions back.

Dagster's queued-run daemon re-reads `dagster/priority` on every dequeue pass, so re-tagging queued
runs is all it takes to reorder the queue, whichever way each run was launched.
"""

from datetime import datetime

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunRecord, RunsFilter
from pydantic import BaseModel

from batch_pipeline.core.names import (
    DEADLINE_TAG,
    GPU_SLOT_TAG,
    MODEL_TAG,
    PARTITION_TAG,
    POLICY_PRIORITY_TAG,
    PRIORITY_TAG,
    REASON_TAG,
    USER_PRIORITY_TAG,
)
from batch_pipeline.core.partitions import cell_of
from batch_pipeline.core.runs import RUNNING_STATUSES, active_gpu_runs, is_gpu_run
from batch_pipeline.queue.policy import Placement, QueuedRun, SlotState

# Enough of a slot's newest runs to find the one that started last there (runs are listed by creation).
_SLOT_HISTORY = 10


def tag_priority(value: str | None) -> int:
    """A priority tag exactly as Dagster's queued-run daemon reads it (`_priority_sort`): missing is 0,
    and so is anything `int()` refuses, e.g. "high" typed in the launchpad."""
    try:
        return int(value if value is not None else "0")
    except ValueError:
        return 0


def partition_of(run: DagsterRun) -> tuple[str, str] | None:
    """(dataset, model) of a GPU run."""
    return cell_of(run.tags.get(PARTITION_TAG, ""))


def _typed_priority(run: DagsterRun) -> str | None:
    """The `dagster/priority` a user set, as typed: the current tag unless the policy wrote it."""
    current = run.tags.get(PRIORITY_TAG)
    if current is not None and run.tags.get(POLICY_PRIORITY_TAG) == current:
        return run.tags.get(USER_PRIORITY_TAG) or None
    return current


def _deadline(run: DagsterRun) -> float | None:
    try:
        return float(run.tags[DEADLINE_TAG])
    except (KeyError, ValueError):
        return None


def user_priority(run: DagsterRun) -> int | None:
    typed = _typed_priority(run)
    return None if typed is None else tag_priority(typed)


class GpuQueue(BaseModel):
    running: list[RunRecord]
    queued: list[RunRecord]
    current_model: str | None
    slots: list[SlotState]
    policy_input: list[QueuedRun]

    model_config = {"arbitrary_types_allowed": True}


def _model(record: RunRecord) -> str:
    partition = partition_of(record.dagster_run)
    return partition[1] if partition else "(unknown)"


def _slot_states(instance: DagsterInstance, slot_count: int, running: list[RunRecord],
                 current_model: str | None) -> list[SlotState]:
    """One slot is the latest GPU run wherever it ran (runs from before slots carry no slot tag);
    with more, each slot's latest run is the one tagged with it that started last. Runs that have
    started but not yet taken their slot still count: when every slot is taken, all are busy."""
    if slot_count == 1:
        return [SlotState(index=0, model=current_model, busy=bool(running))]
    states = []
    for index in range(slot_count):
        records = instance.get_run_records(RunsFilter(tags={GPU_SLOT_TAG: str(index)}), limit=_SLOT_HISTORY)
        running_there = [r for r in records if r.dagster_run.status in RUNNING_STATUSES]
        latest = running_there[0] if running_there else max(
            (r for r in records if r.start_time is not None), key=lambda r: r.start_time, default=None)
        states.append(SlotState(index=index, model=_model(latest) if latest else None, busy=bool(running_there)))
    if len(running) >= slot_count:
        states = [state.model_copy(update={"busy": True}) for state in states]
    return states


def gpu_queue(instance: DagsterInstance, slot_count: int = 1) -> GpuQueue:
    active = active_gpu_runs(instance)
    running = [r for r in active if r.dagster_run.status in RUNNING_STATUSES]
    queued = [r for r in active if r.dagster_run.status == DagsterRunStatus.QUEUED]
    started = list(running)
    if queued:
        oldest = min(r.create_timestamp for r in queued)
        started += [r for r in instance.get_run_records(RunsFilter(updated_after=oldest))
                    if is_gpu_run(r.dagster_run) and r.start_time is not None and r not in running]
    if not running:
        started += [r for r in instance.get_run_records(limit=50, order_by="update_timestamp")
                    if is_gpu_run(r.dagster_run) and r.start_time is not None]
    latest = max(started, key=lambda r: r.start_time or 0.0, default=None)
    start_times = {r.dagster_run.run_id: r.start_time for r in started}

    def passed_over(queued_at: datetime) -> int:
        return sum(1 for start in start_times.values() if start and start > queued_at.timestamp())

    policy_input = [QueuedRun(run_id=r.dagster_run.run_id, model=_model(r),
                              queued_at=r.create_timestamp.timestamp(),
                              user_priority=user_priority(r.dagster_run),
                              passed_over=passed_over(r.create_timestamp),
                              deadline=_deadline(r.dagster_run)) for r in queued]
    current_model = _model(latest) if latest else None
    return GpuQueue(running=running, queued=queued, current_model=current_model,
                    slots=_slot_states(instance, slot_count, running, current_model), policy_input=policy_input)


def placement_tags(run: DagsterRun, placement: Placement, model: str) -> dict[str, str]:
    """The tags to add so the run shows, and the daemon obeys, its placement; empty if unchanged."""
    wanted = {PRIORITY_TAG: str(placement.priority), POLICY_PRIORITY_TAG: str(placement.priority),
              REASON_TAG: placement.reason, MODEL_TAG: model}
    typed = _typed_priority(run)
    if typed is not None:
        wanted[USER_PRIORITY_TAG] = typed
    return {key: value for key, value in wanted.items() if run.tags.get(key) != value}
