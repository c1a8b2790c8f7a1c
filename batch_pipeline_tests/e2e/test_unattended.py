"""The whole flow left alone under the real daemon, on SQLite and on PostgreSQL: inbox, validation,
the one-slot GPU pool, queue order by model, a run worker killed (run monitoring fails it, run
retries start it again, the retry resumes from the chunks) and the daemon killed and restarted
mid-run. Every custom_id comes back exactly once."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from batch_pipeline.core.names import RETRY_NUMBER_TAG
from batch_pipeline.core.runs import ACTIVE_STATUSES
from batch_pipeline.core.settings import POSTGRES_URL_ENV
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.engine.server import stop_server
from batch_pipeline.generation.engine.server_state import ServerFiles
from batch_pipeline.queue.runs import partition_of
from batch_pipeline.tools.prepare_instance import prepare_instance
from batch_pipeline_tests.support.batches import write_batch
from batch_pipeline_tests.support.dagster_runs import gpu_runs_by_creation
from batch_pipeline_tests.support.models import FP32_MODEL, MODEL, PROJECT_ROOT, TWO_ENGINE_REGISTRY
from batch_pipeline_tests.support.processes import processes_mentioning, wait_for

pytestmark = pytest.mark.e2e
LONG_ROWS = 600


def _worker_pid(instance: DagsterInstance, run_id: str) -> int | None:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_START).records
    return records[0].event_log_entry.dagster_event.pid if records else None


def _materialization(instance: DagsterInstance, run_id: str) -> dict:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    return {k: v.value for k, v in records[0].event_log_entry.asset_materialization.metadata.items()}


def _rows_in_first_chunks(data_root: Path, count: int) -> list[int]:
    """Rows of the chunks a retry resumed from: the first ones, since a run numbers its chunks on."""
    chunks = ChunkStore(data_root / "datasets" / _dataset(data_root, "long") / "responses" / MODEL / "chunks")
    return [pq.ParquetFile(path).metadata.num_rows for path in chunks.paths()[:count]]


def _dataset(data_root: Path, stem: str) -> str:
    return next(data_root.glob(f"datasets/{stem}-*")).name


class _Daemon:
    """`dagster-daemon run` as a supervisor would keep it: started, killed with SIGKILL, started again."""

    def __init__(self, env: dict, log: Path):
        self.env, self.log, self.groups, self.process = env, log.open("w"), [], None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "dagster-daemon"), "run", "-w",
             str(PROJECT_ROOT / "workspace.yaml")],
            cwd=PROJECT_ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.groups.append(self.process.pid)

    def kill(self) -> None:
        """The daemon process alone: its run workers carry on."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=60)
        self.log.close()


@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_left_alone_through_a_killed_run_worker_and_a_daemon_restart(storage, data_root, tmp_path, request):
    (data_root / "registry.yaml").write_text(TWO_ENGINE_REGISTRY)
    postgres_url = request.getfixturevalue("postgres_url") if storage == "postgres" else None
    home = tmp_path / "dagster_home"
    env = {**os.environ, "DAGSTER_HOME": str(home), "BATCH_PIPELINE_DATA": str(data_root),
           "BATCH_PIPELINE_SENSOR_INTERVAL": "1", "BATCH_PIPELINE_INBOX_SETTLE_SECONDS": "0.2",
           # Fewer requests in flight than a chunk holds: the kill finds the run mid-way.
           "BATCH_PIPELINE_MAX_IN_FLIGHT": "16",
           # A chunk as soon as its first result waited 1 s: the chunks kept before the kill hold fewer
           # than 100 rows, so the resume below is checked against their real sizes.
           "BATCH_PIPELINE_CHUNK_SECONDS": "1"}
    if postgres_url:
        env[POSTGRES_URL_ENV] = postgres_url
        os.environ[POSTGRES_URL_ENV] = postgres_url  # this process opens the same instance
    prepare_instance(home, postgres_url)
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    config["run_monitoring"]["poll_interval_seconds"] = 2
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    daemon = _Daemon(env, tmp_path / "daemon.log")
    daemon.start()
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            assert (type(instance.run_storage).__name__ == "PostgresRunStorage") == (storage == "postgres")
            write_batch(data_root / "inbox" / "long.jsonl", LONG_ROWS)
            wait_for(lambda: any(r.dagster_run.status == DagsterRunStatus.STARTED for r in gpu_runs_by_creation(instance)),
                     300, "the long batch's GPU run to start", daemon.process)
            # While it holds the GPU, another model's batch and then one of the same model queue up.
            write_batch(data_root / "inbox" / "other.jsonl", 5, model=FP32_MODEL)
            wait_for(lambda: len(gpu_runs_by_creation(instance)) == 2, 120, "the other model's GPU run", daemon.process)
            write_batch(data_root / "inbox" / "same.jsonl", 5)
            wait_for(lambda: len(gpu_runs_by_creation(instance)) == 3, 120, "the same model's GPU run", daemon.process)
            chunks = lambda: list(data_root.glob(f"datasets/long-*/responses/{MODEL}/chunks/chunk-*.parquet"))
            wait_for(chunks, 600, "the long batch's first chunk", daemon.process)
            first = gpu_runs_by_creation(instance)[0]
            assert first.dagster_run.status == DagsterRunStatus.STARTED, "the long batch ended before the kill"
            os.kill(_worker_pid(instance, first.dagster_run.run_id), signal.SIGKILL)

            def a_later_run_started():
                return any(r.dagster_run.status == DagsterRunStatus.STARTED for r in gpu_runs_by_creation(instance)[1:])

            wait_for(a_later_run_started, 600, "a GPU run after the kill to start", daemon.process)
            daemon.kill()
            daemon.start()

            def settled():
                runs = gpu_runs_by_creation(instance)
                cells = {partition_of(r.dagster_run) for r in runs}
                succeeded = {partition_of(r.dagster_run) for r in runs
                             if r.dagster_run.status == DagsterRunStatus.SUCCESS}
                active = any(r.dagster_run.status in ACTIVE_STATUSES for r in runs)
                return runs if len(cells) == 3 and succeeded == cells and not active else None

            runs = wait_for(settled, 900, "a successful run of every cell", daemon.process)
            by_id = {r.dagster_run.run_id: r.dagster_run for r in runs}
            failed = [run for run in by_id.values() if run.status == DagsterRunStatus.FAILURE]
            retried = {run.parent_run_id for run in by_id.values() if run.parent_run_id}
            # Every run a kill failed (the worker's, and one caught starting as the daemon died) was retried.
            assert {run.run_id for run in failed} <= retried, [(r.run_id, r.tags) for r in failed]
            retry = next(run for run in by_id.values() if run.parent_run_id == first.dagster_run.run_id)
            assert retry.tags[RETRY_NUMBER_TAG] == "1"
            resumed = _materialization(instance, retry.run_id)
            assert resumed["attempt"] == 2 and resumed["chunks_resumed"] >= 1
            kept = _rows_in_first_chunks(data_root, resumed["chunks_resumed"])
            assert 0 < kept[0] < 100, kept  # a timer chunk, not a full one
            # The retry generated exactly the rows the kept chunks lacked: none twice, none lost.
            assert resumed["rows_resumed"] == sum(kept)
            assert resumed["rows_generated_this_run"] == LONG_ROWS - sum(kept)

            def first_start(model: str, stem: str) -> float:
                return min(r.start_time for r in runs if partition_of(r.dagster_run)[1] == model
                           and partition_of(r.dagster_run)[0].startswith(stem) and r.start_time)

            # Queued behind the long batch, the run of the model on the GPU went before the earlier other model's.
            assert first_start(MODEL, "same") < first_start(FP32_MODEL, "other")
            spans = sorted((r.start_time, r.end_time) for r in runs if r.start_time)
            assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans

        for stem, count in (("long", LONG_ROWS), ("other", 5), ("same", 5)):
            model = FP32_MODEL if stem == "other" else MODEL
            output = data_root / "datasets" / _dataset(data_root, stem) / "responses" / model / "output.jsonl"
            ids = [json.loads(line)["custom_id"] for line in output.read_text().splitlines()]
            assert sorted(ids) == [f"req-{i:05d}" for i in range(count)], stem
    finally:
        daemon.stop()
        stop_server(ServerFiles(data_root / "engine"))
        os.environ.pop(POSTGRES_URL_ENV, None)
    assert not processes_mentioning(data_root)
