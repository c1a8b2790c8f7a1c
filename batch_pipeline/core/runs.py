"""Run records as the rest of the code needs them: which runs are active, and which materialize a
partition, whatever launched them (a sensor's job, the UI's or a backfill's `__ASSET_JOB`)."""

from collections.abc import Iterator

from dagster import AssetKey, DagsterInstance, DagsterRun, DagsterRunStatus, RunRecord, RunsFilter

from batch_pipeline.core.names import JOB_OF_ASSET, PARTITION_TAG, RESPONSES_ASSET

ACTIVE_STATUSES = frozenset({DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
                             DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING})
RUNNING_STATUSES = frozenset({DagsterRunStatus.STARTING, DagsterRunStatus.STARTED})
_PAGE = 50


def materializes(run: DagsterRun, asset: AssetKey) -> bool:
    return run.job_name == JOB_OF_ASSET.get(asset) or asset in (run.asset_selection or ())


def is_gpu_run(run: DagsterRun) -> bool:
    return materializes(run, RESPONSES_ASSET)


def _pages(instance: DagsterInstance, runs_filter: RunsFilter) -> Iterator[RunRecord]:
    cursor = None
    while records := instance.get_run_records(runs_filter, limit=_PAGE, cursor=cursor):
        yield from records
        cursor = records[-1].dagster_run.run_id


def latest_run(instance: DagsterInstance, asset: AssetKey, partition: str) -> RunRecord | None:
    """The newest run that materializes `asset` for `partition`, however it was launched."""
    runs_filter = RunsFilter(tags={PARTITION_TAG: str(partition)})
    return next((r for r in _pages(instance, runs_filter) if materializes(r.dagster_run, asset)), None)


def latest_tagged_run(instance: DagsterInstance, tags: dict[str, str]) -> RunRecord | None:
    records = instance.get_run_records(RunsFilter(tags=tags), limit=1)
    return records[0] if records else None


def active_gpu_runs(instance: DagsterInstance) -> list[RunRecord]:
    """Queued or running `batch_responses` runs, however they were launched."""
    return [r for r in instance.get_run_records(RunsFilter(statuses=list(ACTIVE_STATUSES)))
            if is_gpu_run(r.dagster_run)]


def is_active(record: RunRecord | None) -> bool:
    return record is not None and record.dagster_run.status in ACTIVE_STATUSES
