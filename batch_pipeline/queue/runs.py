"""The GPU queue as Dagster run records, and the tags that carry the policy's decisions back.

Dagster's queued-run daemon re-reads `dagster/priority` on every dequeue pass, so re-tagging queued
runs is all it takes to reorder the queue, whichever way each run was launched.
"""

from datetime import datetime

from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.storage.dagster_run import DagsterRun, RunRecord
from pydantic import BaseModel

from batch_pipeline.queue.policy import Placement, QueuedRun

RESPONSES_JOB = "generate_responses"
GPU_ASSET = AssetKey("batch_responses")
PRIORITY_TAG = "dagster/priority"
MODEL_TAG = "batch_pipeline/model"
REASON_TAG = "batch_pipeline/queue_reason"
# What the policy last wrote, so a `dagster/priority` that differs from it was set by a user.
POLICY_PRIORITY_TAG = "batch_pipeline/policy_priority"
USER_PRIORITY_TAG = "batch_pipeline/user_priority"
PARTITION_TAG = "dagster/partition"
_ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
_RUNNING = {DagsterRunStatus.STARTING, DagsterRunStatus.STARTED}


def is_gpu_run(run: DagsterRun) -> bool:
    return run.job_name == RESPONSES_JOB or GPU_ASSET in (run.asset_selection or ())


def partition_of(run: DagsterRun) -> tuple[str, str] | None:
    """(dataset, model) of a GPU run; the multi-partition key reads "dataset|model"."""
    key = run.tags.get(PARTITION_TAG, "")
    if "|" not in key:
        return None
    dataset, model = key.split("|", 1)
    return dataset, model


def user_priority(run: DagsterRun) -> int | None:
    current = run.tags.get(PRIORITY_TAG)
    if current is None:
        return None
    if run.tags.get(POLICY_PRIORITY_TAG) == current:
        stored = run.tags.get(USER_PRIORITY_TAG)
        return int(stored) if stored else None
    return int(current)


class GpuQueue(BaseModel):
    running: list[RunRecord]
    queued: list[RunRecord]
    current_model: str | None
    policy_input: list[QueuedRun]

    model_config = {"arbitrary_types_allowed": True}


def _model(record: RunRecord) -> str:
    partition = partition_of(record.dagster_run)
    return partition[1] if partition else "(unknown)"


def gpu_queue(instance: DagsterInstance) -> GpuQueue:
    active = [r for r in instance.get_run_records(RunsFilter(statuses=_ACTIVE)) if is_gpu_run(r.dagster_run)]
    running = [r for r in active if r.dagster_run.status in _RUNNING]
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
                              passed_over=passed_over(r.create_timestamp)) for r in queued]
    return GpuQueue(running=running, queued=queued, current_model=_model(latest) if latest else None,
                    policy_input=policy_input)


def placement_tags(run: DagsterRun, placement: Placement, model: str) -> dict[str, str]:
    """The tags to add so the run shows, and the daemon obeys, its placement; empty if unchanged."""
    wanted = {PRIORITY_TAG: str(placement.priority), POLICY_PRIORITY_TAG: str(placement.priority),
              REASON_TAG: placement.reason, MODEL_TAG: model}
    explicit = user_priority(run)
    if explicit is not None:
        wanted[USER_PRIORITY_TAG] = str(explicit)
    return {key: value for key, value in wanted.items() if run.tags.get(key) != value}
