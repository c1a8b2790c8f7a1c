"""Chunking, resume bookkeeping and output formatting, with a scripted engine in place of vLLM."""

import errno
import json
import pathlib

import pyarrow.parquet as pq
import pytest

from batch_pipeline.core.settings import InputLimits
from batch_pipeline.core.storage import TEMP_MARKER
from batch_pipeline.generation.checkpointing import generate_responses
from batch_pipeline.generation.chunks import ChunkPolicy, ChunkStore, ResultRow
from batch_pipeline.generation.engine.interface import EngineFailure, Finished
from batch_pipeline.generation.results import tally_chunk, write_output_files
from batch_pipeline.intake.requests_table import write_requests
from batch_pipeline.intake.validation import BatchFileScan
from batch_pipeline.protocol.answers import Completion
from batch_pipeline.protocol.batch import BatchOutputLine
from batch_pipeline.protocol.chat import ChatCompletion
from batch_pipeline_tests.support.batches import write_batch
from batch_pipeline_tests.support.fake_engine import Crash, ScriptedEngine
from batch_pipeline_tests.support.models import MODEL


def _run(requests_path, store, engine, progress=None, should_stop=lambda: False):
    progress = [] if progress is None else progress
    return generate_responses(requests_path, store, store.prepare(), engine, MODEL,
                              policy=ChunkPolicy(size=100), max_in_flight=64,
                              on_chunk=progress.append, should_stop=should_stop)


def _lines(path):
    return [BatchOutputLine.model_validate_json(line) for line in path.read_text().splitlines()]


def test_full_run_writes_chunks_and_openai_files(tmp_path, requests_path):
    store = ChunkStore(tmp_path / "chunks")
    progress = []
    summary = _run(requests_path, store, ScriptedEngine(), progress)
    assert [p.name for p in store.paths()] == ["chunk-00000.parquet", "chunk-00001.parquet", "chunk-00002.parquet"]
    assert [p.rows_done for p in progress] == [100, 200, 250]
    assert progress[-1].eta_s == 0
    assert summary.rows_generated == 250 and summary.completion_tokens_generated == 750
    totals = write_output_files(store, tmp_path / "output.jsonl", tmp_path / "errors.jsonl")
    assert (totals.succeeded, totals.failed, totals.prompt_tokens, totals.cached_tokens) == (250, 0, 2500, 1000)
    lines = _lines(tmp_path / "output.jsonl")
    assert sorted(line.custom_id for line in lines) == [f"req-{i:05d}" for i in range(250)]
    body = ChatCompletion.model_validate(lines[0].response.body)
    assert body.usage.total_tokens == 13 and body.choices[0].finish_reason == "stop"
    assert body.usage.prompt_tokens_details.cached_tokens == 4
    assert lines[0].id.startswith("batch_req_") and lines[0].response.request_id.startswith("req_")
    assert (tmp_path / "errors.jsonl").read_text() == ""


def test_crash_then_resume_regenerates_only_unsaved_rows(tmp_path, requests_path):
    store = ChunkStore(tmp_path / "chunks")
    with pytest.raises(EngineFailure) as crash:  # the engine died inside a step: every request in it is a suspect
        _run(requests_path, store, ScriptedEngine(crash_after=230))
    assert isinstance(crash.value.__cause__, Crash) and 0 < len(crash.value.suspects) <= 64
    assert len(store.paths()) == 2
    (store.folder / f"chunk-00002.parquet{TEMP_MARKER}123").write_bytes(b"half a chunk")
    resume = store.prepare()
    assert (resume.chunks, len(resume.done_rows), resume.temp_files_removed) == (2, 200, 1)
    engine = ScriptedEngine()
    summary = _run(requests_path, store, engine)
    assert (summary.chunks_resumed, summary.rows_resumed) == (2, 200)
    assert len(engine.seen) == 50 and not set(engine.seen) & _rows_in_first_chunks(store, 2)
    assert not list(store.folder.glob(f"*{TEMP_MARKER}*"))
    totals = write_output_files(store, tmp_path / "output.jsonl", tmp_path / "errors.jsonl")
    ids = [line.custom_id for line in _lines(tmp_path / "output.jsonl")]
    assert totals.rows == 250 and len(ids) == len(set(ids)) == 250


def _rows_in_first_chunks(store, count):
    return {r for path in store.paths()[:count] for r in pq.read_table(path).column("row_index").to_pylist()}


def test_rerun_after_completion_generates_nothing(tmp_path, requests_path):
    store = ChunkStore(tmp_path / "chunks")
    _run(requests_path, store, ScriptedEngine())
    engine = ScriptedEngine()
    assert _run(requests_path, store, engine).rows_generated == 0 and engine.seen == []


def test_refused_requests_go_to_the_error_file(tmp_path):
    source = write_batch(tmp_path / "batch.jsonl", 3)
    lines = source.read_text().splitlines()
    bad = json.loads(lines[1])
    bad["body"]["tools"] = [{"type": "function"}]
    source.write_text("\n".join([lines[0], json.dumps(bad), lines[2]]) + "\n")
    requests = tmp_path / "requests.parquet"
    write_requests(BatchFileScan(source, {MODEL}, InputLimits()).rows(), requests)
    store = ChunkStore(tmp_path / "chunks")
    _run(requests, store, ScriptedEngine())
    totals = write_output_files(store, tmp_path / "output.jsonl", tmp_path / "errors.jsonl")
    assert (totals.succeeded, totals.failed) == (2, 1)
    [error_line] = _lines(tmp_path / "errors.jsonl")
    assert error_line.custom_id == "req-00001" and error_line.response.status_code == 400
    assert error_line.response.body["error"] == {"message": "no tools", "type": "invalid_request_error",
                                                  "param": "tools", "code": "unsupported_parameter"}


def test_a_stop_request_ends_the_run_at_a_chunk_boundary(tmp_path, requests_path):
    store = ChunkStore(tmp_path / "chunks")
    progress = []
    engine = ScriptedEngine()
    summary = _run(requests_path, store, engine, progress, should_stop=lambda: len(progress) >= 1)
    assert summary.stopped and len(store.paths()) == 1 and len(store.done_rows()) == 100
    assert engine.aborted  # what was still in flight was handed back to the engine
    resumed = _run(requests_path, store, ScriptedEngine())
    assert not resumed.stopped and resumed.rows_generated == 150


def test_unreadable_chunks_are_quarantined_and_their_rows_generated_once(tmp_path, requests_path):
    store = ChunkStore(tmp_path / "chunks")
    _run(requests_path, store, ScriptedEngine())
    first, second, third = store.paths()
    lost = _rows_in_first_chunks(store, 3) - _rows_in_first_chunks(store, 1)
    second.write_bytes(second.read_bytes()[:200])  # truncated by a failing disk
    third.write_bytes(b"")  # emptied
    resume = store.prepare()
    assert sorted(path.name.split(".parquet")[0] for path in resume.quarantined) == ["chunk-00001", "chunk-00002"]
    assert all(path.parent == store.quarantine for path in resume.quarantined)
    engine = ScriptedEngine()
    summary = generate_responses(requests_path, store, resume, engine, MODEL,
                                 policy=ChunkPolicy(size=100), max_in_flight=64)
    assert summary.rows_resumed == 100 and set(engine.seen) == lost
    write_output_files(store, tmp_path / "output.jsonl", tmp_path / "errors.jsonl")
    ids = [line.custom_id for line in _lines(tmp_path / "output.jsonl")]
    assert len(ids) == len(set(ids)) == 250


def test_a_slow_first_wave_is_saved_after_chunk_seconds_not_after_a_full_chunk(tmp_path, requests_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("batch_pipeline.generation.checkpointing.time.monotonic", lambda: clock[0])

    class OneAtATime(ScriptedEngine):
        def _finished(self):
            first, *rest = self._window
            self._window = rest
            self.seen.append(first.row_index)
            clock[0] += 1.0 if len(self.seen) <= 12 else 0.0  # slow answers first, then a fast stream
            return [Finished(ticket=first.row_index, prompt_tokens=10,
                             completions=[Completion(text="a", finish_reason="stop", tokens=1)])]

    store = ChunkStore(tmp_path / "chunks")
    progress = []
    generate_responses(requests_path, store, store.prepare(), OneAtATime(), MODEL,
                       policy=ChunkPolicy(size=100, seconds=5), max_in_flight=64, on_chunk=progress.append)
    assert [p.rows_done for p in progress] == [6, 12, 112, 212, 250]
    assert sum(tally_chunk(path).rows for path in store.paths()) == 250


def _fail_writes_after(monkeypatch, allowed: int) -> None:
    """The chunk writer as a full disk leaves it: the write fails midway with ENOSPC."""
    real_write, calls = pq.write_table, []

    def write_table(table, where, *args, **kwargs):
        calls.append(where)
        if len(calls) > allowed:
            pathlib.Path(where).write_bytes(b"PAR1 half")
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr("batch_pipeline.generation.chunks.pq.write_table", write_table)


def test_a_full_disk_leaves_no_partial_chunk_and_the_rerun_resumes(tmp_path, requests_path, monkeypatch):
    store = ChunkStore(tmp_path / "chunks")
    _fail_writes_after(monkeypatch, allowed=1)
    with pytest.raises(OSError) as failure:
        _run(requests_path, store, ScriptedEngine())
    assert failure.value.errno == errno.ENOSPC
    assert [path.name for path in store.folder.iterdir()] == ["chunk-00000.parquet"]
    monkeypatch.undo()  # space freed
    engine = ScriptedEngine()
    summary = _run(requests_path, store, engine)
    assert summary.rows_resumed == 100 and len(engine.seen) == 150


def test_block_chunks_of_ray_actors_sit_beside_numbered_ones_without_taking_their_numbers(tmp_path):
    store = ChunkStore(tmp_path / "chunks")
    store.prepare()
    row = lambda index: ResultRow(row_index=index, custom_id=f"r{index}", line_id="l", request_id="q",  # noqa: E731
                                  status_code=200, body_json="{}", text="x")
    store.write_block(200, [row(200), row(201)])
    store.write(0, [row(0)])
    store.write_block(1, [row(1)])
    store.write_block(200, [row(200), row(201)])  # a retried block replaces its own chunk
    assert [path.name for path in store.paths()] == [
        "chunk-00000.parquet", "chunk-rows-0000001.parquet", "chunk-rows-0000200.parquet"]
    assert store.next_number() == 1 and store.done_rows() == {0, 1, 200, 201} and store.row_count() == 4
