"""A run whose worker process dies is noticed by run monitoring (our launcher's health check),
retried by run_retries, and the retry resumes from the chunks on disk: real daemon, real engine."""

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from batch_pipeline.generation.engine.server import stop_server
from batch_pipeline.generation.engine.server_state import ServerFiles
from batch_pipeline.queue.runs import is_gpu_run
from batch_pipeline.tools.prepare_instance import prepare_instance
from batch_pipeline_tests.conftest import MODEL, PROJECT_ROOT, processes_mentioning, wait_for, write_batch

pytestmark = pytest.mark.e2e


def _gpu_runs(instance: DagsterInstance) -> list:
    return sorted((r.dagster_run for r in instance.get_run_records() if is_gpu_run(r.dagster_run)),
                  key=lambda run: int(run.tags.get("dagster/retry_number", 0)))


def _worker_pid(instance: DagsterInstance, run_id: str) -> int | None:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_START).records
    return records[0].event_log_entry.dagster_event.pid if records else None


def test_a_killed_run_worker_is_retried_and_resumes_from_its_chunks(data_root, tmp_path):
    home = tmp_path / "dagster_home"
    prepare_instance(home, postgres_url=None)
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    config["run_monitoring"]["poll_interval_seconds"] = 2
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "DAGSTER_HOME": str(home), "BATCH_PIPELINE_DATA": str(data_root),
           "BATCH_PIPELINE_SENSOR_INTERVAL": "1", "BATCH_PIPELINE_INBOX_SETTLE_SECONDS": "0.2",
           "BATCH_PIPELINE_MAX_IN_FLIGHT": "32"}
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "dagster-daemon"), "run", "-w",
                               str(PROJECT_ROOT / "workspace.yaml")],
                              cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        write_batch(data_root / "inbox" / "long.jsonl", 300)
        chunks = lambda: list(data_root.glob(f"datasets/long-*/responses/{MODEL}/chunks/chunk-*.parquet"))
        wait_for(chunks, 600, "the first chunk", daemon)
        with DagsterInstance.from_config(str(home)) as instance:
            first = _gpu_runs(instance)[0]
            os.kill(_worker_pid(instance, first.run_id), signal.SIGKILL)

            def retried():
                runs = _gpu_runs(instance)
                return runs if len(runs) == 2 and runs[1].status == DagsterRunStatus.SUCCESS else None

            first, retry = wait_for(retried, 600, "the retry to succeed", daemon)
            assert instance.get_run_by_id(first.run_id).status == DagsterRunStatus.FAILURE
            assert retry.tags["dagster/retry_number"] == "1" and retry.parent_run_id == first.run_id
            materialization = instance.get_records_for_run(
                retry.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records[0]
            metadata = {k: v.value for k, v in materialization.event_log_entry.asset_materialization.metadata.items()}
        assert metadata["attempt"] == 2 and metadata["chunks_resumed"] >= 1
        assert metadata["rows_generated_this_run"] <= 300 - 100 * metadata["chunks_resumed"]
        output = next(data_root.glob(f"datasets/long-*/responses/{MODEL}/output.jsonl"))
        ids = [json.loads(line)["custom_id"] for line in output.read_text().splitlines()]
        assert sorted(ids) == [f"req-{i:05d}" for i in range(300)]
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)
        log.close()
        stop_server(ServerFiles(data_root / "engine"))
    assert not processes_mentioning(data_root)
