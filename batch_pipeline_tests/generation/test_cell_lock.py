"""One writer per dataset x model cell, with scripted engines: two runs of one cell under two slots
never write a row twice or overwrite a chunk; a second run waits and generates only what is missing,
or ends naming the run that holds the cell; the kernel frees a killed holder's cell; output assembly
keeps one line per row; a hung engine is failed by the watchdog."""

import contextlib
import os
import signal
import subprocess
import sys
import threading

import pyarrow.parquet as pq
import pytest
from dagster import DagsterEventType, instance_for_test, materialize

from batch_pipeline.core.partitions import MODELS, dataset_model_key
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.generation import assets
from batch_pipeline.generation.cell_lock import CellBusy, hold_cell
from batch_pipeline.generation.checkpointing import generate_responses
from batch_pipeline.generation.chunks import ChunkPolicy, ChunkStore
from batch_pipeline.generation.engine.session import EngineUse
from batch_pipeline.generation.results import write_output_files
from batch_pipeline.generation.watchdog import EngineStalled, with_stall_deadline
from batch_pipeline_tests.support.fake_engine import ScriptedEngine
from batch_pipeline_tests.support.models import MODEL, PROJECT_ROOT
from batch_pipeline_tests.support.results import result, validated_dataset

KEY = "cell-0123456789"
ROWS = 250

# Holds a cell as run `holder-run`, forks a child (as vLLM forks its EngineCore) if asked, then sleeps.
_HOLDER = """
import os, sys, time
from pathlib import Path
from batch_pipeline.generation.cell_lock import hold_cell

folder, fork = sys.argv[1:]
with hold_cell(Path(folder), "holder-run", wait_seconds=0):
    if fork == "fork" and os.fork() == 0:
        time.sleep(300)
        os._exit(0)
    print("held", flush=True)
    time.sleep(300)
"""


def _holder(folder, fork: bool = False) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), "fork" if fork else "no"],
                               cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout.readline().strip() == "held"
    return process


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_a_held_cell_names_its_holder_and_a_killed_holder_frees_it_despite_a_forked_child(tmp_path):
    folder = tmp_path / "cell"
    holder = _holder(folder, fork=True)
    try:
        waits = []
        with pytest.raises(CellBusy, match=rf"run holder-run \(pid {holder.pid} on "):
            with hold_cell(folder, "second-run", wait_seconds=0, on_wait=waits.append):
                pass
        assert [w.run_id for w in waits] == ["holder-run"]
        os.kill(holder.pid, signal.SIGKILL)  # the run worker alone; its forked child lives on
        holder.wait()
        with hold_cell(folder, "second-run", wait_seconds=30) as held:
            assert held.run_id == "second-run" and held.pid == os.getpid()
    finally:
        _kill_group(holder)


def test_threads_of_one_process_take_turns_and_a_waiter_sees_the_holder(tmp_path):
    folder, inside, order = tmp_path / "cell", threading.Event(), []
    release = threading.Event()

    def first():
        with hold_cell(folder, "first", wait_seconds=0):
            inside.set()
            release.wait(30)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(30)
    seen = []

    def on_wait(holder):
        seen.append(holder.run_id)
        release.set()

    with hold_cell(folder, "second", wait_seconds=30, on_wait=on_wait):
        order.append("second in")
    thread.join()
    assert seen == ["first"] and order == ["first out", "second in"]


def _cell_pipeline(data_root, **fields) -> PipelineConfig:
    return PipelineConfig(data_dir=str(data_root), gpu_slots="0;1", **fields)


def _run_metadata(instance, run_id: str) -> dict:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    return {k: v.value for k, v in records[0].event_log_entry.asset_materialization.metadata.items()}


def test_two_runs_of_one_cell_under_two_slots_write_every_row_once(monkeypatch, data_root):
    """The second run starts while the first is mid-way (one chunk written, 150 rows to go): it waits
    for the cell, then finds every row on disk and only rewrites the files."""
    first_chunk, second_waiting = threading.Event(), threading.Event()

    class PausingEngine(ScriptedEngine):
        def _finished(self):
            if len(self.seen) >= 100:
                first_chunk.set()
                assert second_waiting.wait(60), "the second run never waited for the cell"
            return super()._finished()

    engines = [PausingEngine(), ScriptedEngine()]

    def session(spec, pipeline, rows_to_generate, held):
        return contextlib.nullcontext(EngineUse(engines.pop(0), "server", True, 0.0))

    real_hold_cell = assets.hold_cell

    def hold_cell_noting_waits(folder, run_id, wait_seconds, on_wait):
        def waiting(holder):
            on_wait(holder)
            second_waiting.set()
        return real_hold_cell(folder, run_id, wait_seconds, on_wait=waiting)

    monkeypatch.setattr(assets, "engine_session", session)
    monkeypatch.setattr(assets, "hold_cell", hold_cell_noting_waits)
    pipeline = _cell_pipeline(data_root, chunk_size=100, max_in_flight=40)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(MODELS.name, [MODEL])
        validated_dataset(instance, pipeline, KEY, ROWS)
        results = {}

        def launch(name):
            results[name] = materialize([assets.batch_responses], instance=instance, resources={"pipeline": pipeline},
                                        partition_key=dataset_model_key(KEY, MODEL), raise_on_error=False)

        first = threading.Thread(target=launch, args=("first",))
        first.start()
        assert first_chunk.wait(60)
        launch("second")
        first.join()
        assert results["first"].success and results["second"].success
        generated = [_run_metadata(instance, results[name].run_id)["rows_generated_this_run"]
                     for name in ("first", "second")]
        logs = [e.message for e in instance.all_logs(results["second"].run_id) if e.message]
    assert generated == [ROWS, 0] and len(engines) == 1  # the second run loaded no engine
    assert any(f"being written by run {results['first'].run_id}" in message for message in logs), logs
    paths = pipeline.layout.responses(KEY, MODEL)
    store = ChunkStore(paths.chunks)
    rows = [r for path in store.paths() for r in pq.read_table(path).column("row_index").to_pylist()]
    assert sorted(rows) == list(range(ROWS))  # every row once, no chunk overwritten
    assert len(paths.output.read_text().splitlines()) == ROWS


def test_a_second_run_waits_for_a_stopped_one_and_generates_only_what_is_missing(monkeypatch, data_root):
    """A run holding the cell in another process leaves 100 rows; the waiting run generates the other 150."""
    engines = []

    def session(spec, pipeline, rows_to_generate, held):
        engines.append(ScriptedEngine())
        return contextlib.nullcontext(EngineUse(engines[-1], "server", True, 0.0))

    monkeypatch.setattr(assets, "engine_session", session)
    pipeline = _cell_pipeline(data_root)
    paths = pipeline.layout.responses(KEY, MODEL)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(MODELS.name, [MODEL])
        validated_dataset(instance, pipeline, KEY, ROWS)
        holder = _holder(paths.folder)
        try:
            ChunkStore(paths.chunks).write(0, [result(i, f"answer {i}", 3) for i in range(100)])

            def stop_the_holder(*args):
                _kill_group(holder)

            real_hold_cell = assets.hold_cell
            monkeypatch.setattr(assets, "hold_cell", lambda folder, run_id, wait, on_wait: real_hold_cell(
                folder, run_id, wait, on_wait=lambda who: (on_wait(who), stop_the_holder())))
            done = materialize([assets.batch_responses], instance=instance, resources={"pipeline": pipeline},
                               partition_key=dataset_model_key(KEY, MODEL))
        finally:
            _kill_group(holder)
        metadata = _run_metadata(instance, done.run_id)
    assert (metadata["rows_resumed"], metadata["rows_generated_this_run"]) == (100, 150)
    assert sorted(engines[0].seen) == list(range(100, ROWS))


def test_a_run_that_finds_its_cell_held_past_the_deadline_ends_naming_the_holder(data_root):
    pipeline = _cell_pipeline(data_root, cell_wait_seconds=0)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(MODELS.name, [MODEL])
        validated_dataset(instance, pipeline, KEY, 5)
        holder = _holder(pipeline.layout.responses(KEY, MODEL).folder)
        try:
            failed = materialize([assets.batch_responses], instance=instance, resources={"pipeline": pipeline},
                                 partition_key=dataset_model_key(KEY, MODEL), raise_on_error=False)
        finally:
            _kill_group(holder)
        [failure] = failed.get_step_failure_events()
    message = failure.event_specific_data.error.message
    assert not failed.success and f"run holder-run (pid {holder.pid}" in message
    assert "BATCH_PIPELINE_CELL_WAIT_SECONDS" in message


def test_output_assembly_keeps_one_line_per_row_preferring_an_answer(tmp_path):
    store = ChunkStore(tmp_path / "chunks")
    store.prepare()
    store.write(0, [result(0, "first"), result(1, None), result(2, "kept")])
    store.write(1, [result(1, "answer"), result(0, "second"), result(2, None)])
    totals = write_output_files(store, tmp_path / "output.jsonl", tmp_path / "errors.jsonl")
    output = (tmp_path / "output.jsonl").read_text().splitlines()
    assert (totals.rows, totals.succeeded, totals.failed) == (3, 3, 0) and len(output) == 3
    assert (tmp_path / "errors.jsonl").read_text() == ""
    assert ChunkStore(store.folder).covers(3) and not ChunkStore(store.folder).covers(4)


def test_covers_checks_row_indexes_not_the_count(tmp_path):
    store = ChunkStore(tmp_path / "chunks")
    store.prepare()
    store.write(0, [result(0, "a"), result(0, "again"), result(2, "c")])  # 3 rows, row 1 missing
    assert store.row_count() == 3 and not store.covers(3)


class _Hang(ScriptedEngine):
    """Answers `answers` requests, then blocks in its next step until released (then dies)."""

    def __init__(self, answers: int):
        super().__init__(crash_after=answers)
        self.released = threading.Event()

    def _finished(self):
        if len(self.seen) >= self.crash_after:
            self.released.wait(60)
            raise RuntimeError("released")
        return super()._finished()


def test_a_hung_engine_is_failed_by_the_watchdog_keeping_what_it_answered(tmp_path, requests_path):
    store = ChunkStore(tmp_path / "chunks")
    engine = _Hang(answers=120)
    try:
        with pytest.raises(EngineStalled, match=rf"the engine for {MODEL} returned nothing for 0s"):
            generate_responses(requests_path, store, store.prepare(), engine, MODEL,
                               policy=ChunkPolicy(size=100), max_in_flight=200, stall_seconds=0.3)
    finally:
        engine.released.set()
    assert store.row_count() == 120  # the full chunk and the partial one flushed on the way out


def test_the_watchdog_passes_results_and_errors_through_and_closes_the_source():
    closed = []

    def source():
        try:
            yield 1
            yield 2
            raise ValueError("engine said no")
        finally:
            closed.append(True)

    results = with_stall_deadline(source(), 5, "m")
    assert [next(results), next(results)] == [1, 2]
    with pytest.raises(ValueError, match="engine said no"):
        next(results)
    assert closed == [True]


def test_a_run_whose_engine_hangs_fails_retriably_and_the_retry_resumes(monkeypatch, data_root):
    hung, healthy = _Hang(answers=100), ScriptedEngine()
    engines = [hung, healthy]

    def session(spec, pipeline, rows_to_generate, held):
        return contextlib.nullcontext(EngineUse(engines.pop(0), "server", True, 0.0))

    stopped = []
    monkeypatch.setattr(assets, "engine_session", session)
    monkeypatch.setattr(assets, "stop_server", stopped.append)  # a hung host is stopped, not reused
    pipeline = _cell_pipeline(data_root, engine_stall_seconds=0.3)
    try:
        with instance_for_test() as instance:
            instance.add_dynamic_partitions(MODELS.name, [MODEL])
            validated_dataset(instance, pipeline, KEY, ROWS)
            done = materialize([assets.batch_responses], instance=instance, resources={"pipeline": pipeline},
                               partition_key=dataset_model_key(KEY, MODEL))
            failures = instance.all_logs(done.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)
            metadata = _run_metadata(instance, done.run_id)
    finally:
        hung.released.set()
    [failure] = failures
    error, message = failure.dagster_event.event_specific_data.error, ""
    while error is not None:  # the retry request, caused by the run's Failure
        message, error = message + error.message, error.cause
    assert "returned nothing for 0s (BATCH_PIPELINE_ENGINE_STALL_SECONDS)" in message and "retried" in message
    assert len(stopped) == 1
    assert (metadata["rows_resumed"], metadata["rows_generated_this_run"]) == (100, 150)
    assert len(healthy.seen) == 150
