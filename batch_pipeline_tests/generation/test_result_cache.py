"""The result cache across batches (generation.result_cache): a repeated deterministic batch is answered
from what an earlier one generated on the same engine, every reused line says so, and nothing else changes."""

import contextlib
import json
import os
import sqlite3
import threading
import time

import pytest
from dagster import DagsterInstance, materialize
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from batch_pipeline.core.partitions import DATASETS, MODELS, dataset_model_key
from batch_pipeline.core.registry import SamplingDefaults, parse_registry
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.core.settings import InputLimits, Settings
from batch_pipeline.generation import assets
from batch_pipeline.generation.checkpointing import generate_responses
from batch_pipeline.generation.chunks import ChunkPolicy, ChunkStore
from batch_pipeline.generation.engine.identity import results_fingerprint
from batch_pipeline.generation.engine.session import EngineUse
from batch_pipeline.generation.feed import DeduplicatingEngine, request_key
from batch_pipeline.generation.result_cache import CachingEngine, ResultCacheFile
from batch_pipeline.generation.results import result_row, write_output_files
from batch_pipeline.intake.assets import batch_requests
from batch_pipeline.intake.requests_table import write_requests
from batch_pipeline.intake.validation import BatchFileScan
from batch_pipeline.monitoring.families import result_families
from batch_pipeline.monitoring.results import ResultsTally
from batch_pipeline.protocol.answers import Completion, EngineRequest, EngineResult
from batch_pipeline.protocol.chat import CHAT_COMPLETIONS_URL
from batch_pipeline.protocol.embeddings import EMBEDDINGS_URL
from batch_pipeline_tests.support.batches import materialize_cell, request_line, write_batch, write_jsonl
from batch_pipeline_tests.support.fake_engine import ScriptedEngine
from batch_pipeline_tests.support.metrics import render, samples
from batch_pipeline_tests.support.models import MODEL, TEST_REGISTRY

GREEDY = SamplingDefaults(temperature=0.0)
DAY = 86400


@pytest.fixture
def cache_file(tmp_path) -> ResultCacheFile:
    return ResultCacheFile(tmp_path / "result_cache", "f" * 64, retention_days=30)


def _requests(tmp_path, name: str, lines: list[dict]):
    source = write_jsonl(tmp_path / f"{name}.jsonl", lines)
    path = tmp_path / f"{name}.parquet"
    write_requests(BatchFileScan(source, {MODEL}, InputLimits()).rows(), path)
    return path


def _questions(count: int, copies_of: int | None = None, **fields) -> list[dict]:
    """`count` chat lines; with `copies_of`, question i repeats question i % copies_of."""
    lines = [request_line(f"c{i:04d}", **fields) for i in range(count)]
    for index, line in enumerate(lines):
        line["body"]["messages"][-1]["content"] = f"question {index % (copies_of or count)}"
    return lines


def _run(tmp_path, name: str, requests_path, engine, max_in_flight: int = 16) -> list[dict]:
    """Generates the batch into its own chunks and returns its output and error lines."""
    store = ChunkStore(tmp_path / name / "chunks")
    generate_responses(requests_path, store, store.prepare(), engine, MODEL, ChunkPolicy(size=25), max_in_flight)
    output, errors = tmp_path / name / "output.jsonl", tmp_path / name / "errors.jsonl"
    write_output_files(store, output, errors)
    return [json.loads(line) for path in (output, errors) for line in path.read_text().splitlines()]


def _reused(line: dict) -> str | None:
    return line["response"]["body"].get("batch_pipeline", {}).get("reused")


def _text(line: dict) -> str:
    return line["response"]["body"]["choices"][0]["message"]["content"]


def _stored(cache_file: ResultCacheFile) -> int:
    if not cache_file.path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(cache_file.path)) as db:
        return db.execute("SELECT count(*) FROM answers").fetchone()[0]


def _cached(engine, cache_file, defaults=GREEDY) -> CachingEngine:
    return CachingEngine(DeduplicatingEngine(engine, defaults), defaults, cache_file)


def test_a_repeated_batch_is_answered_from_the_cache_and_every_line_says_so(tmp_path, cache_file):
    requests = _requests(tmp_path, "batch", _questions(120, copies_of=100, temperature=0))  # 20 copies in the batch
    first_engine = ScriptedEngine(echo=True)
    first = _run(tmp_path, "first", requests, cached_first := _cached(first_engine, cache_file))
    assert len(first_engine.seen) == 100 and cached_first.answered_from_cache == 0
    assert sorted(_reused(line) or "" for line in first).count("batch_copy") == 20
    assert _stored(cache_file) == 100  # each generated answer once; copies are not stored again

    again_engine = ScriptedEngine(echo=True)
    again = _run(tmp_path, "again", requests, cached_again := _cached(again_engine, cache_file))
    assert again_engine.seen == [] and cached_again.answered_from_cache == 120
    assert sorted(line["custom_id"] for line in again) == sorted(f"c{i:04d}" for i in range(120))
    assert all(_reused(line) == "result_cache" and line["response"]["status_code"] == 200 for line in again)
    assert {line["custom_id"]: _text(line) for line in again} == {line["custom_id"]: _text(line) for line in first}
    assert len({line["response"]["body"]["id"] for line in again}) == 120  # each line its own ids


def test_a_cache_pass_without_an_engine_answers_what_it_holds_and_skips_the_rest(tmp_path, cache_file):
    lines = _questions(40, temperature=0)
    _run(tmp_path, "first", _requests(tmp_path, "part", lines[:25]), _cached(ScriptedEngine(echo=True), cache_file))
    cache_only = CachingEngine(None, GREEDY, cache_file)
    answered = _run(tmp_path, "pass", _requests(tmp_path, "all", lines), cache_only)
    assert sorted(line["custom_id"] for line in answered) == [f"c{i:04d}" for i in range(25)]
    assert cache_only.answered_from_cache == 25


def test_hits_and_misses_interleaved_get_every_custom_id_once(tmp_path, cache_file):
    lines = _questions(200, temperature=0)
    _run(tmp_path, "seed", _requests(tmp_path, "some", [line for i, line in enumerate(lines) if i % 5]),
         _cached(ScriptedEngine(echo=True), cache_file))
    engine = ScriptedEngine(echo=True)
    answered = _run(tmp_path, "mixed", _requests(tmp_path, "all", lines), cached := _cached(engine, cache_file),
                    max_in_flight=4)
    assert sorted(line["custom_id"] for line in answered) == [f"c{i:04d}" for i in range(200)]
    assert len(engine.seen) == 40 and cached.answered_from_cache == 160
    assert all((_reused(line) == "result_cache") == (int(line["custom_id"][1:]) % 5 != 0) for line in answered)
    assert _stored(cache_file) == 200


def test_hits_waiting_behind_the_engine_stay_within_the_in_flight_window(tmp_path, cache_file):
    requests = [EngineRequest(i, f"r{i}", {"model": MODEL, "temperature": 0, "messages": [
        {"role": "user", "content": f"q{i}"}]}, CHAT_COMPLETIONS_URL) for i in range(400)]
    list(_cached(ScriptedEngine(echo=True), cache_file).stream(iter([r for r in requests if r.row_index % 10]), 4))
    pulled = 0

    def counted():
        nonlocal pulled
        for request in requests:
            pulled += 1
            yield request

    ahead = [pulled - done for done, _ in enumerate(_cached(ScriptedEngine(echo=True), cache_file).stream(counted(), 4), 1)]
    assert len(ahead) == 400
    # In flight (4) plus the hits waiting to be handed on (4): a 90% hit rate pulls no further ahead.
    assert max(ahead) <= 2 * 4 + 1


@pytest.mark.parametrize(("fields", "defaults"), [
    ({}, SamplingDefaults()),  # vLLM's default temperature 1
    ({"temperature": 0.7}, GREEDY),
])
def test_sampled_requests_never_touch_the_cache(tmp_path, cache_file, fields, defaults):
    requests = _requests(tmp_path, "batch", _questions(30, **fields))
    _run(tmp_path, "first", requests, _cached(ScriptedEngine(echo=True), cache_file, defaults))
    engine = ScriptedEngine(echo=True)
    again = _run(tmp_path, "again", requests, _cached(engine, cache_file, defaults))
    assert len(engine.seen) == 30 and _stored(cache_file) == 0
    assert not any(_reused(line) for line in again)


def test_another_engine_fingerprint_misses(tmp_path, cache_file):
    registry = parse_registry(TEST_REGISTRY, "test")
    edited = parse_registry(TEST_REGISTRY.replace("max_model_len: 2048", "max_model_len: 1024"), "edited")
    before, after = (results_fingerprint(r, MODEL, tmp_path) for r in (registry, edited))
    assert before != after
    requests = _requests(tmp_path, "batch", _questions(30, temperature=0))
    folder = cache_file.folder
    _run(tmp_path, "first", requests, _cached(ScriptedEngine(echo=True), ResultCacheFile(folder, before, 30)))
    engine = ScriptedEngine(echo=True)
    _run(tmp_path, "again", requests, _cached(engine, ResultCacheFile(folder, after, 30)))
    assert len(engine.seen) == 30


def test_refusals_are_not_cached(tmp_path, cache_file):
    requests = _requests(tmp_path, "batch", _questions(10, temperature=0, tools=[
        {"type": "function", "function": {"name": "f"}}]))  # ScriptedEngine refuses tools
    first = _run(tmp_path, "first", requests, _cached(ScriptedEngine(), cache_file))
    assert all(line["response"]["status_code"] == 400 for line in first)
    again = _run(tmp_path, "again", requests, cached := _cached(ScriptedEngine(), cache_file))
    assert _stored(cache_file) == 0 and cached.answered_from_cache == 0
    assert not any(_reused(line) for line in again)


def test_embeddings_round_trip_through_the_cache_and_parse_with_the_openai_client(tmp_path, cache_file):
    class Embedder(ScriptedEngine):
        def _finished(self):
            done = super()._finished()
            for finished in done:
                finished.completions[0] = Completion(text="", finish_reason="stop", tokens=0,
                                                     embedding=[0.25, -1.0, float(finished.ticket)])
            return done

    requests = [EngineRequest(i, f"e{i}", {"model": MODEL, "input": f"text {i}"}, EMBEDDINGS_URL) for i in range(5)]
    first = list(_cached(Embedder(), cache_file, SamplingDefaults()).stream(iter(requests), 4))
    again = list(_cached(inner := Embedder(), cache_file, SamplingDefaults()).stream(iter(requests), 4))
    assert inner.seen == [] and all(result.reused == "result_cache" for result in again)
    by_id = {result.request.custom_id: result.completions[0].embedding for result in first}
    assert {result.request.custom_id: result.completions[0].embedding for result in again} == by_id

    body = json.loads(result_row(again[0], MODEL).body_json)
    parsed = CreateEmbeddingResponse.model_validate(body)
    assert parsed.data[0].embedding == by_id[again[0].request.custom_id]
    assert parsed.model_extra == {"batch_pipeline": {"reused": "result_cache"}}


def test_marked_lines_parse_with_the_openai_client(tmp_path, cache_file):
    requests = _requests(tmp_path, "batch", _questions(6, copies_of=3, temperature=0))
    first = _run(tmp_path, "first", requests, _cached(ScriptedEngine(echo=True), cache_file))
    again = _run(tmp_path, "again", requests, _cached(ScriptedEngine(echo=True), cache_file))
    for line in first + again:
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.choices[0].message.content == _text(line)
        assert (completion.model_extra or {}).get("batch_pipeline") == (
            {"reused": _reused(line)} if _reused(line) else None)
    assert {_reused(line) for line in first} == {None, "batch_copy"}


def test_retention_drops_old_entries_and_unused_files(tmp_path, cache_file):
    requests = [EngineRequest(i, f"r{i}", {"model": MODEL, "temperature": 0, "messages": [
        {"role": "user", "content": f"q{i}"}]}, CHAT_COMPLETIONS_URL) for i in range(10)]
    with cache_file.open() as cache:
        for request in requests:
            cache.put(request_key(request, GREEDY), EngineResult(request=request, completions=[
                Completion(text="a", finish_reason="stop", tokens=1)]))
    with contextlib.closing(sqlite3.connect(cache_file.path)) as db, db:
        db.execute("UPDATE answers SET stored_at = stored_at - ? WHERE rowid % 2 = 0", (31 * DAY,))
    stale = cache_file.folder / f"{'0' * 64}.sqlite3"
    stale.write_bytes(b"")
    os.utime(stale, (time.time() - 31 * DAY,) * 2)
    recent = cache_file.folder / f"{'1' * 64}.sqlite3"
    recent.write_bytes(b"")

    with cache_file.open() as cache:
        kept = [request for request in requests if cache.get(request_key(request, GREEDY), request) is not None]
    assert len(kept) == 5 and _stored(cache_file) == 5
    assert not stale.exists() and recent.exists()


def test_two_runs_write_one_cache_at_once(cache_file):
    def write(start: int) -> None:
        with cache_file.open() as cache:
            for i in range(start, start + 500):
                request = EngineRequest(i, f"r{i}", {"model": MODEL, "input": f"t{i}"}, EMBEDDINGS_URL)
                cache.put(request_key(request, GREEDY),
                          EngineResult(request=request, completions=[Completion("", "stop", 0, embedding=[1.0])]))
            assert cache.failure is None

    threads = [threading.Thread(target=write, args=(start,)) for start in (0, 500)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _stored(cache_file) == 1000


def test_a_damaged_cache_file_never_fails_the_batch(tmp_path, cache_file):
    cache_file.folder.mkdir(parents=True)
    cache_file.path.write_bytes(b"this is not a database" * 100)
    engine = ScriptedEngine(echo=True)
    answered = _run(tmp_path, "batch", _requests(tmp_path, "batch", _questions(20, temperature=0)),
                    cached := _cached(engine, cache_file))
    assert len(answered) == 20 and len(engine.seen) == 20
    assert cached.failure is not None and "not a database" in cached.failure


def test_reuse_is_counted_per_model_and_source():
    tally = ResultsTally()
    base = {"succeeded": 10, "failed": 0, "rows_generated_this_run": 10, "engine": "none"}
    tally.add(str(dataset_model_key("d1", "A")), base | {"rows_deduplicated": 3, "rows_from_result_cache": 0})
    tally.add(str(dataset_model_key("d2", "A")), base | {"rows_deduplicated": 1, "rows_from_result_cache": 10})
    tally.add(str(dataset_model_key("d3", "B")), base)  # recorded before either count existed
    text = samples(render(list(result_families(tally))))
    assert text[("batch_pipeline_rows_reused_total", (("model", "A"), ("source", "batch_copy")))] == 4
    assert text[("batch_pipeline_rows_reused_total", (("model", "A"), ("source", "result_cache")))] == 10
    assert text[("batch_pipeline_rows_reused_total", (("model", "B"), ("source", "result_cache")))] == 0


# --- through batch_responses, with a stand-in engine ---------------------------------------------------------

@pytest.fixture
def fake_engine(monkeypatch):
    """The engine a run would load, without vLLM: records what it was asked."""
    engine = ScriptedEngine(echo=True)

    @contextlib.contextmanager
    def session(spec, pipeline, rows, held):
        yield EngineUse(engine, "in_process", False, 0.0)

    monkeypatch.setattr(assets, "engine_session", session)
    return engine


def _materialize(pipeline: PipelineConfig, dataset: str, lines: list[dict]):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(DATASETS.name, [dataset])
    instance.add_dynamic_partitions(MODELS.name, [MODEL])
    write_jsonl(pipeline.layout.dataset(dataset).input, lines)
    resources = {"pipeline": pipeline}
    assert materialize([batch_requests], partition_key=dataset, instance=instance, resources=resources).success
    result = materialize([assets.batch_responses], partition_key=dataset_model_key(dataset, MODEL),
                         instance=instance, resources=resources)
    return {key: value.value for key, value in result.asset_materializations_for_node("batch_responses")[0]
            .metadata.items()}


def _lines(pipeline, dataset):
    return [json.loads(line) for line in pipeline.layout.responses(dataset, MODEL).output.read_text().splitlines()]


def test_the_cache_is_off_by_default(data_root, fake_engine):
    assert Settings().result_cache is False
    pipeline = PipelineConfig(data_dir=str(data_root))
    lines = _questions(30, temperature=0)
    first = _materialize(pipeline, "first-0123456789", lines)
    again = _materialize(pipeline, "again-0123456789", lines)
    assert len(fake_engine.seen) == 60 and first["rows_from_result_cache"] == again["rows_from_result_cache"] == 0
    assert not pipeline.layout.result_cache.exists()
    assert not any(_reused(line) for line in _lines(pipeline, "again-0123456789"))


def test_a_repeated_batch_takes_no_engine(data_root, fake_engine):
    pipeline = PipelineConfig(data_dir=str(data_root), result_cache=True)
    lines = _questions(30, temperature=0)
    first = _materialize(pipeline, "first-0123456789", lines)
    assert first["rows_from_result_cache"] == 0 and first["engine"] == "in_process" and len(fake_engine.seen) == 30
    again = _materialize(pipeline, "again-0123456789", lines)
    assert len(fake_engine.seen) == 30  # nothing more
    assert again["engine"] == "none" and again["rows_from_result_cache"] == again["rows"] == 30
    answered = _lines(pipeline, "again-0123456789")
    assert all(_reused(line) == "result_cache" for line in answered)
    assert {line["custom_id"]: _text(line) for line in answered} == {
        line["custom_id"]: _text(line) for line in _lines(pipeline, "first-0123456789")}
    # Half new questions: the cached half is answered before the engine is loaded, the rest by it.
    mixed = lines[:15] + _questions(45, temperature=0)[30:]
    third = _materialize(pipeline, "mixed-0123456789", mixed)
    assert third["rows_from_result_cache"] == 15 and len(fake_engine.seen) == 45 and third["engine"] == "in_process"


# --- the real engine ------------------------------------------------------------------------------------------

@pytest.mark.engine
def test_a_repeated_batch_is_served_from_the_cache_on_the_real_engine(pipeline):
    pipeline = PipelineConfig(**{**pipeline.model_dump(), "result_cache": True})
    source = write_batch(pipeline.layout.root / "batch.jsonl", 12)
    lines = [json.loads(line) for line in source.read_text().splitlines()]
    lines[0]["body"].update(temperature=0.9, seed=3)  # seeded: reproducible, so cached too
    first = materialize_cell(pipeline, "first-0123456789", lines)
    assert first.asset_materializations_for_node("batch_responses")[0].metadata["rows_from_result_cache"].value == 0
    again = materialize_cell(pipeline, "again-0123456789", lines)
    metadata = again.asset_materializations_for_node("batch_responses")[0].metadata
    assert metadata["rows_from_result_cache"].value == metadata["rows"].value == 12
    assert metadata["engine"].value == "none"
    answered = {line["custom_id"]: line for line in _lines(pipeline, "again-0123456789")}
    earlier = {line["custom_id"]: line for line in _lines(pipeline, "first-0123456789")}
    assert sorted(answered) == sorted(earlier) == sorted(line["custom_id"] for line in lines)
    assert all(_reused(line) == "result_cache" for line in answered.values())
    assert not any(_reused(line) for line in earlier.values())
    assert {cid: _text(line) for cid, line in answered.items()} == {cid: _text(line) for cid, line in earlier.items()}
    for line in answered.values():
        ChatCompletion.model_validate(line["response"]["body"])
    # Half of it again beside new questions: the engine (still loaded) answers only the new ones.
    fresh = [json.loads(line) for line in write_batch(pipeline.layout.root / "fresh.jsonl", 18).read_text().splitlines()]
    mixed = lines[:6] + fresh[12:]
    third = materialize_cell(pipeline, "mixed-0123456789", mixed)
    metadata = third.asset_materializations_for_node("batch_responses")[0].metadata
    assert metadata["rows_from_result_cache"].value == 6 and metadata["engine"].value == "in_process"
    answered = _lines(pipeline, "mixed-0123456789")
    assert sorted(line["custom_id"] for line in answered) == sorted(line["custom_id"] for line in mixed)
    assert sorted(_reused(line) or "" for line in answered) == [""] * 6 + ["result_cache"] * 6
