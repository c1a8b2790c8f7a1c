"""Finished runs older than the retention go with their event and compute logs, on a real instance;
queued, running and cancelling runs stay however old, and so do fresh finished ones."""

import logging
import os
import time
from pathlib import Path

from dagster import DagsterRunStatus
from dagster._core.test_utils import create_run_for_test

from batch_pipeline.retention.runs import purge_runs
from batch_pipeline_tests.support.aging import age_run
from batch_pipeline_tests.support.dagster_runs import job_origin

LOG = logging.getLogger("test")


def _run(instance, status: DagsterRunStatus, days_old: float) -> str:
    run = create_run_for_test(instance, job_name="generate_responses", status=status,
                              remote_job_origin=job_origin("generate_responses"))
    instance.report_engine_event("a line of its log", run)
    log = Path(instance.compute_log_manager.get_captured_local_path([run.run_id, "compute_logs", "step"], "out"))
    log.parent.mkdir(parents=True)
    log.write_text("captured stdout\n")
    age_run(instance, run.run_id, days_old)
    return run.run_id


def _compute_log_exists(instance, run_id: str) -> bool:
    return os.path.exists(instance.compute_log_manager.get_captured_local_path([run_id, "compute_logs", "step"],
                                                                               "out"))


def test_only_old_finished_runs_go_with_their_logs(instance, caplog):
    old = {status: _run(instance, status, 40) for status in
           (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)}
    active = {status: _run(instance, status, 40) for status in
              (DagsterRunStatus.QUEUED, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING)}
    fresh = _run(instance, DagsterRunStatus.SUCCESS, 2)

    with caplog.at_level(logging.INFO):
        removed = purge_runs(instance, 30, time.time(), LOG)

    assert sorted(removed) == sorted(old.values())
    for run_id in old.values():
        assert instance.get_run_by_id(run_id) is None and not instance.all_logs(run_id)
        assert not _compute_log_exists(instance, run_id)
        assert f"retention: removed finished run {run_id}" in caplog.text
    for run_id in [*active.values(), fresh]:
        assert instance.get_run_by_id(run_id) is not None and instance.all_logs(run_id)
        assert _compute_log_exists(instance, run_id)


def test_zero_days_keeps_every_run(instance):
    run_id = _run(instance, DagsterRunStatus.SUCCESS, 4000)
    assert purge_runs(instance, 0, time.time(), LOG) == []
    assert instance.get_run_by_id(run_id) is not None
