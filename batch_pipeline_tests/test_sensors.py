"""Sensors evaluated against a real (temporary) Dagster instance; the daemon's part — applying a
result's partitions and deduplicating run keys — is applied by hand, as the daemon would."""

import json

import pytest
from dagster import (
    AssetMaterialization,
    DagsterInstance,
    DagsterRun,
    SensorResult,
    SkipReason,
    build_sensor_context,
    instance_for_test,
    materialize,
)
from fastapi.testclient import TestClient

from batch_pipeline.api.app import create_app
from batch_pipeline.api.sensors import build_shim_sensor
from batch_pipeline.core.names import REQUESTS_ASSET
from batch_pipeline.core.partitions import DATASETS, MODELS, dataset_model_key
from batch_pipeline.core.settings import Settings
from batch_pipeline.generation.assets import responses_job
from batch_pipeline.generation.sensors import build_responses_sensor
from batch_pipeline.intake.assets import batch_requests, ingest_job
from batch_pipeline.intake.sensors import build_inbox_sensor
from batch_pipeline_tests.conftest import MODEL, request_line, ui_launched_run, write_batch


@pytest.fixture
def instance():
    with instance_for_test() as instance:
        yield instance


def _tick(sensor, instance: DagsterInstance, pipeline, cursor=None):
    context = build_sensor_context(instance=instance, resources={"pipeline": pipeline}, cursor=cursor)
    return sensor(context)


def _apply(instance: DagsterInstance, result: SensorResult) -> None:
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def test_inbox_sensor_registers_and_requests_each_file_once(instance, pipeline):
    sensor = build_inbox_sensor(ingest_job, 5)
    write_batch(pipeline.layout.inbox / "one.jsonl", 3)
    result = _tick(sensor, instance, pipeline)
    [run] = result.run_requests
    assert run.partition_key == run.run_key and run.run_key.startswith("one-")
    assert list(result.dynamic_partitions_requests[0].partition_keys) == [run.run_key]
    _apply(instance, result)
    instance.add_run(DagsterRun(job_name=ingest_job.name, tags={"dagster/run_key": run.run_key}))
    assert isinstance(_tick(sensor, instance, pipeline), SkipReason)


def test_inbox_sensor_requests_a_registered_dataset_whose_run_was_lost(instance, pipeline):
    sensor = build_inbox_sensor(ingest_job, 5)
    write_batch(pipeline.layout.inbox / "one.jsonl", 3)
    first = _tick(sensor, instance, pipeline)
    _apply(instance, first)  # partition committed, daemon died before recording the run
    again = _tick(sensor, instance, pipeline)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]
    assert again.dynamic_partitions_requests == []
    pipeline.layout.dataset(first.run_requests[0].run_key).validation.write_text("{}")
    assert isinstance(_tick(sensor, instance, pipeline), SkipReason)


def test_inbox_sensor_recovers_a_tick_lost_after_the_move(instance, pipeline):
    sensor = build_inbox_sensor(ingest_job, 5)
    write_batch(pipeline.layout.inbox / "one.jsonl", 3)
    lost = _tick(sensor, instance, pipeline)  # daemon died before committing this result
    again = _tick(sensor, instance, pipeline)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in lost.run_requests]


def test_inbox_sensor_skips_partial_files_and_rejects_empty_ones(instance, pipeline):
    sensor = build_inbox_sensor(ingest_job, 5)
    write_batch(pipeline.layout.inbox / "big.jsonl.part", 3)
    (pipeline.layout.inbox / "empty.jsonl").write_text("")
    assert isinstance(_tick(sensor, instance, pipeline), SkipReason)
    assert (pipeline.layout.rejected / "empty.jsonl.error.txt").exists()
    assert (pipeline.layout.inbox / "big.jsonl.part").exists()


def test_responses_sensor_queues_the_model_each_validated_dataset_names(instance, pipeline):
    datasets = ["alpha-0000000001", "beta-0000000002"]
    instance.add_dynamic_partitions(DATASETS.name, datasets)
    for key in datasets:
        write_batch(pipeline.layout.dataset(key).input, 2)
        assert materialize([batch_requests], partition_key=key, instance=instance,
                           resources={"pipeline": pipeline}).success
    sensor = build_responses_sensor(responses_job, 5)
    result = _tick(sensor, instance, pipeline)
    assert [r.partition_key for r in result.run_requests] == [dataset_model_key(k, MODEL) for k in datasets]
    assert [r.run_key for r in result.run_requests] == [f"{k}|{MODEL}" for k in datasets]
    assert list(result.dynamic_partitions_requests[0].partition_keys) == [MODEL]
    _apply(instance, result)
    assert instance.has_dynamic_partition(MODELS.name, MODEL)
    assert isinstance(_tick(sensor, instance, pipeline, cursor=result.cursor), SkipReason)


def test_models_partitions_follow_the_registry(instance, pipeline):
    sensor = build_responses_sensor(responses_job, 5)
    registry = pipeline.layout.registry
    registry.write_text(registry.read_text() + "  second-model:\n    engine: {model: somewhere}\n")
    result = _tick(sensor, instance, pipeline)
    assert result.run_requests == []
    assert sorted(result.dynamic_partitions_requests[0].partition_keys) == [MODEL, "second-model"]
    _apply(instance, result)
    assert isinstance(_tick(sensor, instance, pipeline, cursor=result.cursor), SkipReason)


def test_a_broken_registry_does_not_stop_the_sensor(instance, pipeline):
    pipeline.layout.registry.write_text("models: [")
    assert isinstance(_tick(build_responses_sensor(responses_job, 5), instance, pipeline), SkipReason)


def test_shim_sensor_launches_one_run_per_dataset_and_none_for_expired_batches(instance, pipeline):
    body = "".join(json.dumps(request_line(f"r{i}")) + "\n" for i in range(2)).encode()
    with TestClient(create_app(Settings(data_dir=pipeline.data_dir), instance,
                               refresh_interval_seconds=3600)) as client:
        def submit():
            file_id = client.post("/v1/files", files={"file": ("b.jsonl", body)}, data={"purpose": "batch"}).json()["id"]
            return client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                                     "completion_window": "24h"}).json()["id"]

        first, second = submit(), submit()
        store = client.app.state.service.store
        dataset = store.batch(first)[1]
        assert store.batch(second)[1] == dataset  # deterministic twins share the dataset
        instance.add_dynamic_partitions(DATASETS.name, [dataset])
        assert materialize([batch_requests], partition_key=dataset, instance=instance,
                           resources={"pipeline": pipeline}).success
        sensor = build_shim_sensor(responses_job, 5)
        [run] = _tick(sensor, instance, pipeline).run_requests
        assert run.run_key == first and run.partition_key == dataset_model_key(dataset, MODEL)
        assert run.tags == {"batch_pipeline/batch_id": first}

        for batch_id in (first, second):
            batch, _ = store.batch(batch_id)
            store.save_batch(batch.model_copy(update={"expires_at": 0}))
        assert isinstance(_tick(sensor, instance, pipeline), SkipReason)


def test_a_cell_launched_from_the_ui_gets_no_second_gpu_run_and_the_api_follows_it(instance, pipeline):
    body = "".join(json.dumps(request_line(f"r{i}")) + "\n" for i in range(2)).encode()
    with TestClient(create_app(Settings(data_dir=pipeline.data_dir), instance,
                               refresh_interval_seconds=3600)) as client:
        file_id = client.post("/v1/files", files={"file": ("b.jsonl", body)}, data={"purpose": "batch"}).json()["id"]
        batch_id = client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                                     "completion_window": "24h"}).json()["id"]
        dataset = client.app.state.service.store.batch(batch_id)[1]
        instance.add_dynamic_partitions(DATASETS.name, [dataset])
        assert materialize([batch_requests], partition_key=dataset, instance=instance,
                           resources={"pipeline": pipeline}).success
        ui_run = ui_launched_run(instance, dataset, MODEL)

        assert isinstance(_tick(build_shim_sensor(responses_job, 5), instance, pipeline), SkipReason)
        batch = client.get(f"/v1/batches/{batch_id}").json()
        assert batch["status"] == "in_progress"
        [entry] = client.get("/v1/queue").json()["data"]
        assert (entry["run_id"], entry["status"], entry["dataset"]) == (ui_run.run_id, "running", dataset)


def test_the_responses_sensor_never_stalls_on_a_page_of_records_it_skips(instance, pipeline):
    layout = pipeline.layout
    shim_datasets = [f"shim-b-{i:010d}" for i in range(150)]
    for key in [*shim_datasets, "inbox-0000000001"]:
        layout.dataset(key).folder.mkdir(parents=True)
        source = "shim" if key in shim_datasets else "inbox"
        layout.dataset(key).source.write_text(json.dumps({"source": source}))
        instance.report_runless_asset_event(
            AssetMaterialization(asset_key=REQUESTS_ASSET, partition=key, metadata={"model": MODEL}))
    sensor, cursor, requested = build_responses_sensor(responses_job, 5), None, []
    for _ in range(3):
        context = build_sensor_context(instance=instance, resources={"pipeline": pipeline}, cursor=cursor)
        result = sensor(context)
        requested += [request.run_key for request in getattr(result, "run_requests", [])]
        cursor = getattr(result, "cursor", None) or context.cursor
    assert requested == [f"inbox-0000000001|{MODEL}"]
