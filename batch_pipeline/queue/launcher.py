"""Dagster's default run launcher, plus the health check run monitoring needs on one machine.

The default launcher cannot tell that a run worker died (OOM killer, `kill -9`), so such a run would
stay STARTED forever. Here the worker is the process that reported the run's start; once it is gone,
run monitoring fails the run and `run_retries` launches a new attempt that resumes from the chunks.
"""

import psutil
from dagster import DagsterEventType, DagsterRun, DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus  # not exported by dagster

# Process start times and event timestamps come from different clocks' roundings.
_CLOCK_SLACK_SECONDS = 2.0


class LocalRunLauncher(DefaultRunLauncher):
    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        records = self._instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.RUN_START, limit=1, ascending=False).records
        if not records:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "the run has not reported its start yet")
        entry = records[0].event_log_entry
        pid = entry.dagster_event.pid
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "the run's start event carries no process id")
        try:
            process = psutil.Process(pid)
            # A recycled pid belongs to a process started after the run's worker reported in.
            if process.create_time() <= entry.timestamp + _CLOCK_SLACK_SECONDS \
                    and process.status() != psutil.STATUS_ZOMBIE:
                return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))
        except psutil.NoSuchProcess:
            pass
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {pid} is gone", run_worker_id=str(pid))
