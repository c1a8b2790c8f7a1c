"""Finished Dagster runs age out with their event logs and compute logs. Dagster purges old ticks itself
(dagster.yaml `retention:`) but never runs: this does, never touching a queued or running one."""

import logging
from datetime import UTC, datetime

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from batch_pipeline.core.retention import cutoff, remove_each

FINISHED_STATUSES = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
# Deleted per pass, oldest first, so a sensor tick stays well inside Dagster's 60 s; the next pass goes on.
RUNS_PER_PASS = 200


def old_finished_runs(instance: DagsterInstance, before: float, limit: int = RUNS_PER_PASS) -> list[str]:
    """Runs that finished (were last updated) before `before`, oldest first."""
    runs_filter = RunsFilter(statuses=list(FINISHED_STATUSES), updated_before=datetime.fromtimestamp(before, UTC))
    return [record.dagster_run.run_id
            for record in instance.get_run_records(runs_filter, limit=limit, order_by="update_timestamp",
                                                   ascending=True)]


def _delete_run(instance: DagsterInstance, run_id: str) -> None:
    """Compute logs first: a run whose deletion fails keeps its record and is deleted on the next pass."""
    instance.compute_log_manager.delete_logs(prefix=[run_id])
    instance.delete_run(run_id)


def purge_runs(instance: DagsterInstance, days: float, now: float,
               log: logging.Logger | logging.LoggerAdapter) -> list[str]:
    before = cutoff(days, now)
    if before is None:
        return []
    return remove_each(old_finished_runs(instance, before), lambda run_id: _delete_run(instance, run_id), log,
                       "finished run")
