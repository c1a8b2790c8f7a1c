"""The shim's HTTP API in process (FastAPI's test client) against a real temporary Dagster instance.
Generation itself is covered end to end with the openai client in test_end_to_end.py."""

import json

import pytest
from dagster import DagsterRun, DagsterRunStatus, instance_for_test, materialize
from fastapi.testclient import TestClient

from batch_pipeline.api.app import create_app
from batch_pipeline.core.partitions import DATASETS
from batch_pipeline.core.settings import Settings
from batch_pipeline.generation.chunks import ChunkStore, ResultRow
from batch_pipeline.generation.results import write_output_files
from batch_pipeline.intake.assets import batch_requests
from batch_pipeline_tests.conftest import MODEL, request_line

KEY = "secret-key"


@pytest.fixture
def instance():
    with instance_for_test() as instance:
        yield instance


def _client(pipeline, instance, **settings) -> TestClient:
    app = create_app(Settings(data_dir=pipeline.data_dir, **settings), instance, refresh_interval_seconds=3600)
    return TestClient(app)


@pytest.fixture
def client(pipeline, instance):
    with _client(pipeline, instance) as client:
        yield client


def _jsonl(lines) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def _upload(client, lines, name="batch.jsonl", purpose="batch"):
    return client.post("/v1/files", files={"file": (name, _jsonl(lines), "application/jsonl")},
                       data={"purpose": purpose})


def _create(client, file_id, **fields):
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **fields}
    return client.post("/v1/batches", json=body)


def _validate(pipeline, instance, client, batch_id):
    """What the inbox sensor + ingest run do for a new API batch."""
    dataset = client.app.state.service.store.batch(batch_id)[1]
    instance.add_dynamic_partitions(DATASETS.name, [dataset])
    materialize([batch_requests], partition_key=dataset, instance=instance, resources={"pipeline": pipeline},
                raise_on_error=False)
    return dataset


def test_files_round_trip(client):
    lines = [request_line(f"r{i}") for i in range(3)]
    file = _upload(client, lines).json()
    assert file["object"] == "file" and file["purpose"] == "batch" and file["bytes"] == len(_jsonl(lines))
    assert client.get(f"/v1/files/{file['id']}").json() == file
    assert client.get(f"/v1/files/{file['id']}/content").content == _jsonl(lines)
    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == [file["id"]]
    assert client.delete(f"/v1/files/{file['id']}").json() == {"id": file["id"], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file['id']}").status_code == 404


def test_client_filenames_are_metadata_only(client, pipeline):
    file = _upload(client, [request_line("a")], name="../../etc/passwd").json()
    assert file["filename"] == "passwd"
    stored = list((pipeline.layout.shim / "files").iterdir())
    assert [p.name for p in stored] == [f"{file['id']}.jsonl"]


def test_uploads_over_the_limit_are_refused(pipeline, instance):
    with _client(pipeline, instance, max_bytes=500) as client:
        response = _upload(client, [request_line(f"r{i}") for i in range(10)])
    assert response.status_code == 413 and response.json()["error"]["code"] == "file_too_large"
    assert not list((pipeline.layout.shim / "files").iterdir())


def test_errors_have_openai_shape(client):
    missing = client.get("/v1/batches/batch_nope")
    assert missing.status_code == 404
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert client.get("/v1/files/file-nope/content").status_code == 404
    assert _upload(client, [request_line("a")], purpose="fine-tune").status_code == 400
    file_id = _upload(client, [request_line("a")]).json()["id"]
    assert _create(client, file_id, endpoint="/v1/embeddings").status_code == 422
    assert _create(client, file_id, completion_window="48h").status_code == 422
    too_many = {f"k{i}": "v" for i in range(17)}
    assert _create(client, file_id, metadata=too_many).json()["error"]["param"] == "metadata"
    assert _create(client, "file-nope").status_code == 404


def test_api_key_is_required_when_configured(pipeline, instance):
    with _client(pipeline, instance, shim_api_key=KEY) as client:
        assert client.get("/v1/batches").status_code == 401
        assert client.get("/v1/batches", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/batches", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert client.get("/openapi.json").status_code == 401
        assert _upload(client, [request_line("a")]).status_code == 401
        assert client.get("/health").json()["dagster_instance"] == "ok"
    assert not list((pipeline.layout.shim / "files").iterdir())


def test_file_list_pages(client):
    ids = [_upload(client, [request_line(f"r{i}")]).json()["id"] for i in range(3)]
    first = client.get("/v1/files", params={"limit": 2}).json()
    assert [f["id"] for f in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = client.get("/v1/files", params={"limit": 2, "after": first["last_id"]}).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and not rest["has_more"]
    oldest = client.get("/v1/files", params={"order": "asc", "limit": 1}).json()
    assert oldest["data"][0]["id"] == ids[0] and oldest["has_more"]


def test_list_pagination_newest_first(client):
    file_id = _upload(client, [request_line("a")]).json()["id"]
    ids = [_create(client, file_id).json()["id"] for _ in range(5)]
    first = client.get("/v1/batches", params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == ids[::-1][:2] and first["has_more"]
    assert first["first_id"] == ids[4] and first["last_id"] == ids[3]
    rest = client.get("/v1/batches", params={"limit": 10, "after": first["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == ids[::-1][2:] and not rest["has_more"]


@pytest.mark.parametrize("lines, code, line", [
    (["{broken", request_line("b")], "invalid_json_line", 1),
    ([request_line("a"), request_line("b", model="other")], "mismatched_model", 2),
    ([request_line("a", model="gpt-4o")], "model_not_found", 1),
])
def test_validation_failures_report_line_errors(client, pipeline, instance, lines, code, line):
    batch = _create(client, _upload(client, lines).json()["id"]).json()
    assert batch["status"] == "validating"
    _validate(pipeline, instance, client, batch["id"])
    failed = client.get(f"/v1/batches/{batch['id']}").json()
    assert failed["status"] == "failed" and failed["failed_at"]
    assert (failed["errors"]["data"][0]["code"], failed["errors"]["data"][0]["line"]) == (code, line)


def test_deleting_an_input_in_use_is_refused(client):
    file_id = _upload(client, [request_line("a")]).json()["id"]
    _create(client, file_id)
    assert client.delete(f"/v1/files/{file_id}").status_code == 409


def test_cancel_before_validation(client):
    batch = _create(client, _upload(client, [request_line("a")]).json()["id"]).json()
    cancelled = client.post(f"/v1/batches/{batch['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["cancelling_at"] and cancelled["cancelled_at"]
    assert client.post(f"/v1/batches/{batch['id']}/cancel").status_code == 409


def test_expiry_keeps_finished_rows_and_reports_the_rest(pipeline, instance):
    with _client(pipeline, instance, shim_completion_window_seconds=0) as client:
        lines = [request_line(f"r{i}") for i in range(3)]
        batch = _create(client, _upload(client, lines).json()["id"]).json()
        dataset = _validate(pipeline, instance, client, batch["id"])
        body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL, "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
        ChunkStore(pipeline.layout.responses(dataset, MODEL).chunks).write(0, [ResultRow(
            row_index=1, custom_id="r1", line_id="batch_req_1", request_id="req_1", status_code=200,
            body_json=json.dumps(body), prompt_tokens=5, completion_tokens=2)])
        expired = client.get(f"/v1/batches/{batch['id']}").json()
        assert expired["status"] == "expired" and expired["expired_at"]
        output = client.get(f"/v1/files/{expired['output_file_id']}/content").text.splitlines()
        errors = [json.loads(line) for line in client.get(f"/v1/files/{expired['error_file_id']}/content").text.splitlines()]
    assert [json.loads(line)["custom_id"] for line in output] == ["r1"]
    assert sorted(e["custom_id"] for e in errors) == ["r0", "r2"]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert expired["request_counts"] == {"total": 3, "completed": 1, "failed": 0}


def test_models_queue_and_metrics(client):
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [MODEL]
    assert client.get("/v1/queue").json() == {"object": "list", "data": []}
    _create(client, _upload(client, [request_line("a")]).json()["id"])
    metrics = client.get("/metrics").text
    assert 'batch_pipeline_batches{status="validating"} 1.0' in metrics
    assert "batch_pipeline_queue_depth 0.0" in metrics


def test_identical_deterministic_batches_share_a_dataset_and_reuse_its_results(client, pipeline, instance):
    lines = [request_line(f"r{i}") for i in range(2)]  # registry default temperature 0: deterministic
    first = _create(client, _upload(client, lines).json()["id"]).json()
    second = _create(client, _upload(client, lines).json()["id"]).json()
    store = client.app.state.service.store
    dataset = store.batch(first["id"])[1]
    assert store.batch(second["id"])[1] == dataset
    _validate(pipeline, instance, client, first["id"])

    # The first batch's GPU run finished: results on disk, a successful run on record.
    paths = pipeline.layout.responses(dataset, MODEL)
    body = {"id": "c", "object": "chat.completion", "created": 0, "model": MODEL, "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
    rows = [ResultRow(row_index=i, custom_id=f"r{i}", line_id=f"batch_req_{i}", request_id=f"req_{i}",
                      status_code=200, body_json=json.dumps(body), prompt_tokens=5, completion_tokens=2)
            for i in range(2)]
    ChunkStore(paths.chunks).write(0, rows)
    write_output_files(ChunkStore(paths.chunks), paths.output, paths.errors)
    instance.add_run(DagsterRun(job_name="generate_responses", status=DagsterRunStatus.SUCCESS,
                                tags={"dagster/partition": f"{dataset}|{MODEL}"}))

    for batch in (first, second):
        done = client.get(f"/v1/batches/{batch['id']}").json()
        assert done["status"] == "completed" and done["error_file_id"] is None
        assert done["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
        output = client.get(f"/v1/files/{done['output_file_id']}/content").text.splitlines()
        assert sorted(json.loads(line)["custom_id"] for line in output) == ["r0", "r1"]
    outputs = {client.get(f"/v1/batches/{b['id']}").json()["output_file_id"] for b in (first, second)}
    assert len(outputs) == 2  # each batch has its own output file


def test_sampled_batches_are_generated_afresh(client):
    lines = [request_line(f"r{i}", temperature=0.8) for i in range(2)]
    store = client.app.state.service.store
    datasets = {store.batch(_create(client, _upload(client, lines).json()["id"]).json()["id"])[1] for _ in range(2)}
    assert len(datasets) == 2
    seeded = [request_line(f"r{i}", temperature=0.8, seed=5) for i in range(2)]
    datasets = {store.batch(_create(client, _upload(client, seeded).json()["id"]).json()["id"])[1] for _ in range(2)}
    assert len(datasets) == 1
