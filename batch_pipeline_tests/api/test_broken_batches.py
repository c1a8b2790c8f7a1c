"""One batch whose files cannot be read (a truncated chunk, a broken validation report) beside healthy ones:
every sensor, the queue view and the metrics go on serving the others, the broken one is reported and
still ends (expired) when its window does."""

import json

import pytest
from dagster import AssetMaterialization, SensorResult, build_sensor_context

from batch_pipeline.api import clock
from batch_pipeline.api.sensors import build_shim_sensor
from batch_pipeline.core.names import REQUESTS_ASSET
from batch_pipeline.generation.assets import responses_job
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.results import write_output_files
from batch_pipeline.generation.sensors import build_responses_sensor
from batch_pipeline.intake.assets import ingest_job
from batch_pipeline.intake.inbox import sweep_inbox
from batch_pipeline.intake.sensors import build_inbox_sensor
from batch_pipeline_tests.support.batches import request_line, write_batch
from batch_pipeline_tests.support.dagster_runs import ui_launched_run
from batch_pipeline_tests.support.models import MODEL
from batch_pipeline_tests.support.results import result
from batch_pipeline_tests.support.shim_client import answer_rows, create_batch, shim_client, upload_file, validate_batch


def _tick(sensor, instance, pipeline, cursor=None):
    return sensor(build_sensor_context(instance=instance, resources={"pipeline": pipeline}, cursor=cursor))


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _break_validation(pipeline, dataset: str) -> None:
    pipeline.layout.dataset(dataset).validation.write_text('{"file": "b.jsonl", "lines": 2, "requ')


def _break_chunk(pipeline, dataset: str) -> None:
    store = ChunkStore(pipeline.layout.responses(dataset, MODEL).chunks)
    store.prepare()
    _truncate(store.write(0, [result(0, "Paris", tokens=2)]))


def _batch(client, pipeline, instance, prefix: str) -> tuple[str, str]:
    file_id = upload_file(client, [request_line(f"{prefix}{index}") for index in range(2)]).json()["id"]
    batch_id = create_batch(client, file_id).json()["id"]
    return batch_id, validate_batch(pipeline, instance, client, batch_id)


@pytest.mark.parametrize("breakage", [_break_validation, _break_chunk], ids=["validation_json", "truncated_chunk"])
def test_a_broken_api_batch_is_reported_and_expires_while_the_others_are_served(pipeline, instance, monkeypatch,
                                                                             breakage):
    with shim_client(pipeline, instance) as client:
        healthy, healthy_dataset = _batch(client, pipeline, instance, "ok")
        broken, broken_dataset = _batch(client, pipeline, instance, "bad")
        breakage(pipeline, broken_dataset)

        sensor_result = _tick(build_shim_sensor(responses_job, 5), instance, pipeline)
        launched = [request.run_key for request in sensor_result.run_requests]
        assert healthy in launched

        for dataset in (healthy_dataset, broken_dataset):
            ui_launched_run(instance, dataset, MODEL)
        queue = client.get("/v1/queue")
        assert queue.status_code == 200
        entries = {entry["dataset"]: entry for entry in queue.json()["data"]}
        assert entries[healthy_dataset]["rows_total"] == 2 and entries[healthy_dataset]["problem"] is None
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "batch_pipeline_queue_depth" in metrics.text

        assert client.get(f"/v1/batches/{healthy}").json()["status"] == "in_progress"
        stuck = client.get(f"/v1/batches/{broken}").json()
        assert stuck["status"] not in {"failed", "expired"}
        assert [error["code"] for error in stuck["errors"]["data"]] == ["refresh_failed"]
        health = client.get("/health").json()
        assert health["status"] == "degraded" and [f["batch_id"] for f in health["refresh_failures"]] == [broken]
        if breakage is _break_chunk:
            assert entries[broken_dataset]["rows_done"] is None and "Parquet" in entries[broken_dataset]["problem"]

        monkeypatch.setattr(clock, "now", lambda: stuck["expires_at"])
        ended = client.get(f"/v1/batches/{broken}").json()
        assert ended["status"] == "expired" and ended["expired_at"] == stuck["expires_at"]
        assert [error["code"] for error in ended["errors"]["data"]] == ["batch_unreadable"]
        assert client.get("/health").json()["refresh_failures"] == []


def _inbox_cell(pipeline, instance, name: str, rows: int) -> str:
    """An inbox dataset validated and answered in full, as a finished run leaves it."""
    layout = pipeline.layout
    write_batch(layout.inbox / f"{name}.jsonl", rows)
    [outcome] = sweep_inbox(layout, 10**6, settle_seconds=0)
    result_ = _tick(build_inbox_sensor(ingest_job, 5), instance, pipeline)
    for request in result_.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    paths = layout.responses(outcome.dataset, MODEL)
    store = ChunkStore(paths.chunks)
    store.prepare()
    store.write(0, [result(index, "answer", tokens=1) for index in range(rows)])
    write_output_files(store, paths.output, paths.errors)
    return outcome.dataset


def test_the_responses_sensor_moves_past_a_cell_it_cannot_read_and_queues_its_run(pipeline, instance):
    broken = _inbox_cell(pipeline, instance, "broken", 2)
    healthy = _inbox_cell(pipeline, instance, "healthy", 3)
    _truncate(ChunkStore(pipeline.layout.responses(broken, MODEL).chunks).paths()[0])
    result_ = _tick(build_responses_sensor(responses_job, 5), instance, pipeline)
    assert isinstance(result_, SensorResult)
    # The healthy cell is recorded from disk; the broken one gets its run, which regenerates the unreadable rows.
    assert [event.partition for event in result_.asset_events] == [f"{healthy}|{MODEL}"]
    assert [request.run_key for request in result_.run_requests] == [f"{broken}|{MODEL}"]


def test_a_responses_record_that_cannot_be_handled_is_logged_and_passed(pipeline, instance):
    layout = pipeline.layout
    for key, source in (("inbox-broken", "{not json"), ("inbox-fine", json.dumps({"source": "inbox"}))):
        layout.dataset(key).folder.mkdir(parents=True)
        layout.dataset(key).source.write_text(source)
        instance.report_runless_asset_event(
            AssetMaterialization(asset_key=REQUESTS_ASSET, partition=key, metadata={"model": MODEL}))
    result_ = _tick(build_responses_sensor(responses_job, 5), instance, pipeline)
    assert [request.run_key for request in result_.run_requests] == [f"inbox-fine|{MODEL}"]
    assert result_.cursor is not None
    again = _tick(build_responses_sensor(responses_job, 5), instance, pipeline, cursor=result_.cursor)
    assert not getattr(again, "run_requests", [])  # past both records


def test_the_inbox_sensor_reingests_a_dataset_whose_report_is_broken_and_takes_the_others_in(pipeline, instance):
    layout = pipeline.layout
    write_batch(layout.inbox / "broken.jsonl", 2)
    write_batch(layout.inbox / "fine.jsonl", 3, temperature=0.5)
    accepted = {outcome.file_name: outcome.dataset for outcome in sweep_inbox(layout, 10**6, settle_seconds=0)}
    _break_validation(pipeline, accepted["broken.jsonl"])
    result_ = _tick(build_inbox_sensor(ingest_job, 5), instance, pipeline)
    assert isinstance(result_, SensorResult)
    [added] = result_.dynamic_partitions_requests
    assert sorted(added.partition_keys) == sorted(accepted.values())
    report = json.loads(layout.dataset(accepted["broken.jsonl"]).validation.read_text())
    assert report["requests"] == 2 and report["error_count"] == 0  # validated again in the tick


def test_a_batch_that_cannot_be_refreshed_expires_with_the_answers_its_chunks_hold(pipeline, instance, monkeypatch):
    with shim_client(pipeline, instance) as client:
        batch, dataset = _batch(client, pipeline, instance, "stuck")
        ChunkStore(pipeline.layout.responses(dataset, MODEL).chunks).write(0, answer_rows({0: "stuck0"}))
        assert client.get(f"/v1/batches/{batch}").json()["status"] == "in_progress"  # its model is known
        service = client.app.state.service
        monkeypatch.setattr(service, "observe", lambda *args: (_ for _ in ()).throw(RuntimeError("storage gone")))
        stuck = client.get(f"/v1/batches/{batch}").json()
        monkeypatch.setattr(clock, "now", lambda: stuck["expires_at"])
        ended = client.get(f"/v1/batches/{batch}").json()
        assert ended["status"] == "expired"
        output = client.get(f"/v1/files/{ended['output_file_id']}/content").text.splitlines()
        errors = client.get(f"/v1/files/{ended['error_file_id']}/content").text.splitlines()
    assert [json.loads(line)["custom_id"] for line in output] == ["stuck0"]
    assert [json.loads(line)["error"]["code"] for line in errors] == ["batch_expired"]
