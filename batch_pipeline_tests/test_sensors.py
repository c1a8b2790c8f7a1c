"""Sensors evaluated against a real (temporary) Dagster instance; the daemon's part — storing a
result's asset events, adding its partitions and deduplicating run keys — is applied by hand, as the
daemon would."""

import json

import pytest
from dagster import (
    AssetMaterialization,
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRun,
    SensorResult,
    SkipReason,
    build_sensor_context,
    materialize,
)
from fastapi.testclient import TestClient

from batch_pipeline.api.app import create_app
from batch_pipeline.api.sensors import build_shim_sensor
from batch_pipeline.core.names import REQUESTS_ASSET, RESPONSES_ASSET
from batch_pipeline.core.partitions import DATASETS, MODELS, dataset_model_key
from batch_pipeline.core.settings import Settings
from batch_pipeline.generation.assets import responses_job
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.results import write_output_files
from batch_pipeline.generation.sensors import build_responses_sensor
from batch_pipeline.intake.assets import batch_requests, ingest_job
from batch_pipeline.intake.inbox import sweep_inbox
from batch_pipeline.intake.sensors import build_inbox_sensor
from batch_pipeline_tests.support.batches import fail_renames_of, request_line, write_batch, write_jsonl
from batch_pipeline_tests.support.dagster_runs import ui_launched_run
from batch_pipeline_tests.support.models import MODEL
from batch_pipeline_tests.support.poison_lines import POISON_LINES
from batch_pipeline_tests.support.results import result


def _tick(sensor, instance: DagsterInstance, pipeline, cursor=None):
    context = build_sensor_context(instance=instance, resources={"pipeline": pipeline}, cursor=cursor)
    return sensor(context)


def _apply(instance: DagsterInstance, result: SensorResult) -> None:
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def _run_path_sensor():
    """Every file over the in-tick budget: each is ingested by its run."""
    return build_inbox_sensor(ingest_job, 5, in_tick_bytes=0)


def _requests_events(instance: DagsterInstance) -> list[AssetMaterialization]:
    return [record.asset_materialization for record in instance.fetch_materializations(REQUESTS_ASSET, limit=100).records]


def test_a_passing_file_is_validated_in_the_tick_and_its_gpu_run_follows_without_an_ingest_run(instance, pipeline):
    sensor = build_inbox_sensor(ingest_job, 5)
    write_batch(pipeline.layout.inbox / "one.jsonl", 3)
    result = _tick(sensor, instance, pipeline)
    assert result.run_requests == []
    [key] = result.dynamic_partitions_requests[0].partition_keys
    [event] = _requests_events(instance)
    assert event.partition == key
    assert {"model": MODEL, "rows": 3, "ingested_by": "inbox_sensor"}.items() <= _values(event).items()
    paths = pipeline.layout.dataset(key)
    assert json.loads(paths.validation.read_text())["error_count"] == 0 and paths.requests.exists()
    _apply(instance, result)
    assert isinstance(_tick(sensor, instance, pipeline), SkipReason)
    [gpu_run] = _tick(build_responses_sensor(responses_job, 5), instance, pipeline).run_requests
    assert gpu_run.partition_key == dataset_model_key(key, MODEL)


def test_a_failing_file_is_left_to_its_ingest_run_which_names_the_lines(instance, pipeline):
    write_jsonl(pipeline.layout.inbox / "bad.jsonl", [request_line("a"), {"custom_id": "b"}])
    [run] = _tick(build_inbox_sensor(ingest_job, 5), instance, pipeline).run_requests
    paths = pipeline.layout.dataset(run.run_key)
    assert not paths.validation.exists() and not paths.requests.exists() and _requests_events(instance) == []


def test_a_file_over_the_budget_gets_its_run_and_holds_up_no_smaller_one(instance, pipeline):
    write_batch(pipeline.layout.inbox / "big.jsonl", 40)
    write_batch(pipeline.layout.inbox / "small.jsonl", 2)
    budget = (pipeline.layout.inbox / "small.jsonl").stat().st_size
    result = _tick(build_inbox_sensor(ingest_job, 5, in_tick_bytes=budget), instance, pipeline)
    [run] = result.run_requests
    assert run.run_key.startswith("big-")
    assert [event.partition.split("-")[0] for event in _requests_events(instance)] == ["small"]


def test_a_tick_lost_after_an_in_tick_ingest_registers_the_dataset_and_records_nothing_twice(instance, pipeline):
    sensor = build_inbox_sensor(ingest_job, 5)
    write_batch(pipeline.layout.inbox / "one.jsonl", 3)
    lost = _tick(sensor, instance, pipeline)  # the daemon died before committing this result
    again = _tick(sensor, instance, pipeline)
    assert again.run_requests == [] and again.asset_events == []
    assert again.dynamic_partitions_requests[0].partition_keys == lost.dynamic_partitions_requests[0].partition_keys
    assert len(_requests_events(instance)) == 1


def test_a_file_over_the_in_tick_budget_gets_one_ingest_run(instance, pipeline):
    sensor = _run_path_sensor()
    write_batch(pipeline.layout.inbox / "one.jsonl", 3)
    result = _tick(sensor, instance, pipeline)
    [run] = result.run_requests
    assert run.partition_key == run.run_key and run.run_key.startswith("one-")
    assert list(result.dynamic_partitions_requests[0].partition_keys) == [run.run_key]
    _apply(instance, result)
    instance.add_run(DagsterRun(job_name=ingest_job.name, tags={"dagster/run_key": run.run_key}))
    assert isinstance(_tick(sensor, instance, pipeline), SkipReason)


def test_inbox_sensor_requests_a_registered_dataset_whose_run_was_lost(instance, pipeline):
    sensor = _run_path_sensor()
    write_batch(pipeline.layout.inbox / "one.jsonl", 3)
    first = _tick(sensor, instance, pipeline)
    _apply(instance, first)  # partition committed, daemon died before recording the run
    again = _tick(sensor, instance, pipeline)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]
    assert again.dynamic_partitions_requests == []
    pipeline.layout.dataset(first.run_requests[0].run_key).validation.write_text("{}")
    assert isinstance(_tick(sensor, instance, pipeline), SkipReason)


def test_inbox_sensor_recovers_a_tick_lost_after_the_move(instance, pipeline):
    sensor = _run_path_sensor()
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


def test_a_file_the_inbox_cannot_take_in_holds_up_no_other_ingest(instance, pipeline, monkeypatch):
    fail_renames_of(monkeypatch, "stuck.jsonl")
    write_batch(pipeline.layout.inbox / "stuck.jsonl", 3)
    write_batch(pipeline.layout.inbox / "fine.jsonl", 3)
    [run] = _tick(_run_path_sensor(), instance, pipeline).run_requests
    assert run.run_key.startswith("fine-")
    assert "cross-device" in (pipeline.layout.inbox / "stuck.jsonl.error.txt").read_text()


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


def test_an_inbox_cell_launched_from_the_ui_gets_no_second_gpu_run(instance, pipeline):
    key = "alpha-0000000001"
    instance.add_dynamic_partitions(DATASETS.name, [key])
    write_batch(pipeline.layout.dataset(key).input, 2)
    assert materialize([batch_requests], partition_key=key, instance=instance, resources={"pipeline": pipeline}).success
    ui_launched_run(instance, key, MODEL)
    result = _tick(build_responses_sensor(responses_job, 5), instance, pipeline)
    assert not getattr(result, "run_requests", [])


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
    with TestClient(base_url="http://localhost", app=create_app(Settings(data_dir=pipeline.data_dir), instance,
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
        # The batch's deadline travels with its run: the queue runs earlier deadlines first.
        assert run.tags == {"batch_pipeline/batch_id": first,
                            "batch_pipeline/deadline": str(store.batch(first)[0].expires_at)}

        for batch_id in (first, second):
            batch, _ = store.batch(batch_id)
            store.save_batch(batch.model_copy(update={"expires_at": 0}))
        assert isinstance(_tick(sensor, instance, pipeline), SkipReason)


def _api_client(instance, pipeline) -> TestClient:
    return TestClient(base_url="http://localhost", app=create_app(Settings(data_dir=pipeline.data_dir), instance, refresh_interval_seconds=3600))


def _validated_api_batch(client: TestClient, instance, pipeline) -> tuple[str, str]:
    """A two-request batch submitted through the API, its input validated as the ingest run would."""
    body = "".join(json.dumps(request_line(f"r{i}")) + "\n" for i in range(2)).encode()
    file_id = client.post("/v1/files", files={"file": ("b.jsonl", body)}, data={"purpose": "batch"}).json()["id"]
    batch_id = client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                                 "completion_window": "24h"}).json()["id"]
    dataset = client.app.state.service.store.batch(batch_id)[1]
    instance.add_dynamic_partitions(DATASETS.name, [dataset])
    assert materialize([batch_requests], partition_key=dataset, instance=instance,
                       resources={"pipeline": pipeline}).success
    return batch_id, dataset


def test_a_cell_launched_from_the_ui_gets_no_second_gpu_run_and_the_api_follows_it(instance, pipeline):
    with _api_client(instance, pipeline) as client:
        batch_id, dataset = _validated_api_batch(client, instance, pipeline)
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


def _worked_on_by_an_earlier_instance(pipeline) -> tuple[str, str]:
    """A data folder as another instance database left it: a dataset answered in full (three requests,
    one failed) and a dataset whose validation failed."""
    layout = pipeline.layout
    write_batch(layout.inbox / "done.jsonl", 3)
    write_jsonl(layout.inbox / "invalid.jsonl", ["{oops"])
    accepted = {outcome.file_name: outcome.dataset for outcome in sweep_inbox(layout, 10**6, settle_seconds=0)}
    done, invalid = accepted["done.jsonl"], accepted["invalid.jsonl"]
    earlier = DagsterInstance.ephemeral()
    earlier.add_dynamic_partitions(DATASETS.name, [done, invalid])
    for key in (done, invalid):
        materialize([batch_requests], partition_key=key, instance=earlier, resources={"pipeline": pipeline},
                    raise_on_error=False)
    paths = layout.responses(done, MODEL)
    store = ChunkStore(paths.chunks)
    store.prepare()
    store.write(0, [result(0, "Paris", tokens=2), result(1, None)])
    store.write(1, [result(2, "red", tokens=1)])
    write_output_files(store, paths.output, paths.errors)
    return done, invalid


def _values(event: AssetMaterialization) -> dict:
    return {name: getattr(value, "value", value) for name, value in event.metadata.items()}


def _has_materialization(instance: DagsterInstance, asset, partition: str) -> bool:
    return bool(instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset, asset_partitions=[partition]), limit=1).records)


def test_a_fresh_instance_records_finished_work_from_disk_and_runs_only_new_files(instance, pipeline):
    done, invalid = _worked_on_by_an_earlier_instance(pipeline)
    write_batch(pipeline.layout.inbox / "new.jsonl", 2)
    inbox_sensor, responses_sensor = _run_path_sensor(), build_responses_sensor(responses_job, 5)

    ingested = _tick(inbox_sensor, instance, pipeline)
    [ingest] = ingested.run_requests
    assert ingest.run_key.startswith("new-")
    assert sorted(ingested.dynamic_partitions_requests[0].partition_keys) == sorted([done, invalid, ingest.run_key])
    [requests_event] = ingested.asset_events
    assert requests_event.asset_key == REQUESTS_ASSET and requests_event.partition == done
    assert {"model": MODEL, "rows": 3, "recorded_from_disk": True}.items() <= _values(requests_event).items()
    _apply(instance, ingested)
    instance.add_run(DagsterRun(job_name=ingest_job.name, tags={"dagster/run_key": ingest.run_key}))
    assert isinstance(_tick(inbox_sensor, instance, pipeline), SkipReason)

    generated = _tick(responses_sensor, instance, pipeline)
    assert generated.run_requests == []
    [responses_event] = generated.asset_events
    cell = str(dataset_model_key(done, MODEL))
    assert responses_event.asset_key == RESPONSES_ASSET and responses_event.partition == cell
    assert {"rows": 3, "succeeded": 2, "failed": 1, "prompt_tokens": 20, "completion_tokens": 3,
            "recorded_from_disk": True}.items() <= _values(responses_event).items()
    _apply(instance, generated)
    assert _has_materialization(instance, REQUESTS_ASSET, done) and _has_materialization(instance, RESPONSES_ASSET, cell)
    assert not _has_materialization(instance, REQUESTS_ASSET, invalid)
    assert isinstance(_tick(responses_sensor, instance, pipeline), SkipReason)  # every record read again


def test_a_cell_with_answers_missing_on_disk_gets_its_gpu_run(instance, pipeline):
    done, _ = _worked_on_by_an_earlier_instance(pipeline)
    ChunkStore(pipeline.layout.responses(done, MODEL).chunks).paths()[-1].unlink()
    _apply(instance, _tick(build_inbox_sensor(ingest_job, 5), instance, pipeline))
    generated = _tick(build_responses_sensor(responses_job, 5), instance, pipeline)
    assert [request.run_key for request in generated.run_requests] == [f"{done}|{MODEL}"]
    assert generated.asset_events == []


def test_a_tick_whose_partitions_were_lost_after_its_events_records_nothing_twice(instance, pipeline):
    done, _ = _worked_on_by_an_earlier_instance(pipeline)
    sensor = build_inbox_sensor(ingest_job, 5)
    for event in _tick(sensor, instance, pipeline).asset_events:
        instance.report_runless_asset_event(event)  # the daemon died before adding the partitions
    again = _tick(sensor, instance, pipeline)
    assert again.asset_events == [] and again.run_requests == []
    assert done in again.dynamic_partitions_requests[0].partition_keys


def test_an_api_batch_whose_answers_are_on_disk_takes_no_gpu_run_on_a_fresh_instance(instance, pipeline):
    with _api_client(instance, pipeline) as client:
        batch_id, dataset = _validated_api_batch(client, instance, pipeline)
        # Answered in full under an earlier instance database, of which this one knows nothing.
        paths = pipeline.layout.responses(dataset, MODEL)
        store = ChunkStore(paths.chunks)
        store.prepare()
        store.write(0, [result(0, "Paris", tokens=2), result(1, "red", tokens=1)])
        write_output_files(store, paths.output, paths.errors)

        assert isinstance(_tick(build_shim_sensor(responses_job, 5), instance, pipeline), SkipReason)
        batch = client.get(f"/v1/batches/{batch_id}").json()
        assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 2


@pytest.mark.parametrize("name, line, param", POISON_LINES, ids=[case[0] for case in POISON_LINES])
def test_a_poison_line_dropped_in_the_inbox_is_named_in_the_validation_report(instance, pipeline, name, line, param):
    write_jsonl(pipeline.layout.inbox / "poison.jsonl", [request_line("a"), line, request_line("c")])
    result = _tick(build_inbox_sensor(ingest_job, 5), instance, pipeline)
    _apply(instance, result)
    [run] = result.run_requests
    ingest = materialize([batch_requests], partition_key=run.partition_key, instance=instance,
                         resources={"pipeline": pipeline}, raise_on_error=False)
    assert not ingest.success  # the ingest run fails, naming the line
    report = json.loads(pipeline.layout.dataset(run.run_key).validation.read_text())
    assert [(error["line"], error["param"]) for error in report["errors"]] == [(2, param)]
