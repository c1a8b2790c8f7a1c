"""The shim's HTTP API in process (FastAPI's test client) against a real temporary Dagster instance.
Generation itself is covered end to end with the openai client in test_end_to_end.py."""

import errno
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest
from starlette.datastructures import UploadFile

from batch_pipeline.api import service as service_module
from batch_pipeline.api.binding import is_loopback, listen_refusal
from batch_pipeline.api.gatekeeper import Gatekeeper
from batch_pipeline.api.publishing import BatchPublisher, batch_file_id
from batch_pipeline.core import storage
from batch_pipeline.core.settings import Settings
from batch_pipeline.core.stop_request import request_stop, stop_requested
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline_tests.support.batches import request_line
from batch_pipeline_tests.support.models import EMBEDDED_MODEL_DIR, MODEL, PROJECT_ROOT
from batch_pipeline_tests.support.shim_client import (
    KEY,
    answer_rows,
    create_batch,
    finish_batch,
    jsonl_bytes,
    shim_client,
    started_run,
    upload_file,
    validate_batch,
)

# Tests that also run with the API's store in a real PostgreSQL (the `postgres_url` fixture's database).
ON_BOTH_STORES = pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def store(request) -> dict:
    """The store settings of `client`: SQLite unless the test is marked ON_BOTH_STORES."""
    if getattr(request, "param", "sqlite") == "postgres":
        return {"postgres_url": request.getfixturevalue("postgres_url")}
    return {}


@pytest.fixture
def client(pipeline, instance, store):
    with shim_client(pipeline, instance, **store) as client:
        yield client


@ON_BOTH_STORES
def test_files_round_trip(client):
    lines = [request_line(f"r{i}") for i in range(3)]
    file = upload_file(client, lines).json()
    assert file["object"] == "file" and file["purpose"] == "batch" and file["bytes"] == len(jsonl_bytes(lines))
    assert client.get(f"/v1/files/{file['id']}").json() == file
    assert client.get(f"/v1/files/{file['id']}/content").content == jsonl_bytes(lines)
    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == [file["id"]]
    assert client.delete(f"/v1/files/{file['id']}").json() == {"id": file["id"], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file['id']}").status_code == 404


def test_client_filenames_are_metadata_only(client, pipeline):
    file = upload_file(client, [request_line("a")], name="../../etc/passwd").json()
    assert file["filename"] == "passwd"
    stored = list((pipeline.layout.shim / "files").iterdir())
    assert [p.name for p in stored] == [f"{file['id']}.jsonl"]


def test_uploads_over_the_limit_are_refused(pipeline, instance):
    with shim_client(pipeline, instance, max_bytes=500) as client:
        response = upload_file(client, [request_line(f"r{i}") for i in range(10)])
    assert response.status_code == 413 and response.json()["error"]["code"] == "file_too_large"
    assert not list((pipeline.layout.shim / "files").iterdir())


@ON_BOTH_STORES
def test_errors_have_openai_shape(client):
    missing = client.get("/v1/batches/batch_nope")
    assert missing.status_code == 404
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert client.get("/v1/files/file-nope/content").status_code == 404
    assert upload_file(client, [request_line("a")], purpose="fine-tune").status_code == 400
    file_id = upload_file(client, [request_line("a")]).json()["id"]
    assert create_batch(client, file_id, endpoint="/v1/fine_tuning/jobs").status_code == 400
    assert create_batch(client, file_id, completion_window="48h").json()["error"]["param"] == "completion_window"
    too_many = {f"k{i}": "v" for i in range(17)}
    assert create_batch(client, file_id, metadata=too_many).json()["error"]["param"] == "metadata"
    assert create_batch(client, "file-nope").status_code == 404


def test_api_key_is_required_when_configured(pipeline, instance):
    with shim_client(pipeline, instance, shim_api_key=KEY) as client:
        assert client.get("/v1/batches").status_code == 401
        assert client.get("/v1/batches", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/batches", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert client.get("/openapi.json").status_code == 401
        assert upload_file(client, [request_line("a")]).status_code == 401
        assert client.get("/health").json() == {"status": "ok"}  # details need the key
        assert client.get("/health", headers={"Authorization": f"Bearer {KEY}"}).json()["dagster_instance"] == "ok"
    assert not list((pipeline.layout.shim / "files").iterdir())


@ON_BOTH_STORES
def test_file_list_pages(client):
    ids = [upload_file(client, [request_line(f"r{i}")]).json()["id"] for i in range(3)]
    first = client.get("/v1/files", params={"limit": 2}).json()
    assert [f["id"] for f in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = client.get("/v1/files", params={"limit": 2, "after": first["last_id"]}).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and not rest["has_more"]
    oldest = client.get("/v1/files", params={"order": "asc", "limit": 1}).json()
    assert oldest["data"][0]["id"] == ids[0] and oldest["has_more"]


@ON_BOTH_STORES
def test_list_pagination_newest_first(client):
    file_id = upload_file(client, [request_line("a")]).json()["id"]
    ids = [create_batch(client, file_id).json()["id"] for _ in range(5)]
    first = client.get("/v1/batches", params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == ids[::-1][:2] and first["has_more"]
    assert first["first_id"] == ids[4] and first["last_id"] == ids[3]
    rest = client.get("/v1/batches", params={"limit": 10, "after": first["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == ids[::-1][2:] and not rest["has_more"]


@ON_BOTH_STORES
@pytest.mark.parametrize("lines, code, line", [
    (["{broken", request_line("b")], "invalid_json_line", 1),
    ([request_line("a"), request_line("b", model="other")], "mismatched_model", 2),
    ([request_line("a", model="gpt-4o")], "model_not_found", 1),
])
def test_validation_failures_report_line_errors(client, pipeline, instance, lines, code, line):
    batch = create_batch(client, upload_file(client, lines).json()["id"]).json()
    assert batch["status"] == "validating"
    validate_batch(pipeline, instance, client, batch["id"])
    failed = client.get(f"/v1/batches/{batch['id']}").json()
    assert failed["status"] == "failed" and failed["failed_at"]
    assert (failed["errors"]["data"][0]["code"], failed["errors"]["data"][0]["line"]) == (code, line)


@ON_BOTH_STORES
def test_deleting_an_input_in_use_is_refused(client):
    file_id = upload_file(client, [request_line("a")]).json()["id"]
    create_batch(client, file_id)
    assert client.delete(f"/v1/files/{file_id}").status_code == 409


@ON_BOTH_STORES
def test_cancel_before_validation(client):
    batch = create_batch(client, upload_file(client, [request_line("a")]).json()["id"]).json()
    cancelled = client.post(f"/v1/batches/{batch['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["cancelling_at"] and cancelled["cancelled_at"]
    assert client.post(f"/v1/batches/{batch['id']}/cancel").status_code == 409


def test_expiry_keeps_finished_rows_and_reports_the_rest(pipeline, instance):
    with shim_client(pipeline, instance, shim_completion_window_seconds=0) as client:
        lines = [request_line(f"r{i}") for i in range(3)]
        batch = create_batch(client, upload_file(client, lines).json()["id"]).json()
        dataset = validate_batch(pipeline, instance, client, batch["id"])
        ChunkStore(pipeline.layout.responses(dataset, MODEL).chunks).write(0, answer_rows({1: "r1"}))
        expired = client.get(f"/v1/batches/{batch['id']}").json()
        assert expired["status"] == "expired" and expired["expired_at"]
        output = client.get(f"/v1/files/{expired['output_file_id']}/content").text.splitlines()
        errors = [json.loads(line) for line in client.get(f"/v1/files/{expired['error_file_id']}/content").text.splitlines()]
    assert [json.loads(line)["custom_id"] for line in output] == ["r1"]
    assert sorted(e["custom_id"] for e in errors) == ["r0", "r2"]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert expired["request_counts"] == {"total": 3, "completed": 1, "failed": 2}  # as OpenAI counts them


def test_a_chunk_written_while_an_expired_batch_is_assembled_lands_in_one_file_only(pipeline, instance, monkeypatch):
    """A shared run may write a chunk between the unfinished lines and the output assembly: both read one
    snapshot of the chunks, so no custom_id is both answered and `batch_expired`."""
    real_unfinished = BatchPublisher._unfinished_lines

    def unfinished_then_a_chunk_lands(publisher, dataset, store, error):
        lines = real_unfinished(publisher, dataset, store, error)
        ChunkStore(pipeline.layout.responses(dataset, MODEL).chunks).write(1, answer_rows({0: "r0"}))
        return lines

    monkeypatch.setattr(BatchPublisher, "_unfinished_lines", unfinished_then_a_chunk_lands)
    with shim_client(pipeline, instance, shim_completion_window_seconds=0) as client:
        batch = create_batch(client, upload_file(client, [request_line(f"r{i}") for i in range(3)]).json()["id"]).json()
        dataset = validate_batch(pipeline, instance, client, batch["id"])
        ChunkStore(pipeline.layout.responses(dataset, MODEL).chunks).write(0, answer_rows({1: "r1"}))
        expired = client.get(f"/v1/batches/{batch['id']}").json()
        output = client.get(f"/v1/files/{expired['output_file_id']}/content").text.splitlines()
        errors = client.get(f"/v1/files/{expired['error_file_id']}/content").text.splitlines()
    answered = [json.loads(line)["custom_id"] for line in output]
    unfinished = [json.loads(line)["custom_id"] for line in errors]
    assert answered == ["r1"] and sorted(unfinished) == ["r0", "r2"]
    assert expired["request_counts"] == {"total": 3, "completed": 1, "failed": 2}


def test_models_queue_and_metrics(client):
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [MODEL]
    assert client.get("/v1/queue").json() == {"object": "list", "data": []}
    create_batch(client, upload_file(client, [request_line("a")]).json()["id"])
    metrics = client.get("/metrics").text
    assert 'batch_pipeline_batches{status="validating"} 1.0' in metrics
    assert "batch_pipeline_queue_depth 0.0" in metrics


@ON_BOTH_STORES
def test_identical_deterministic_batches_share_a_dataset_and_reuse_its_results(client, pipeline, instance):
    lines = [request_line(f"r{i}") for i in range(2)]  # registry default temperature 0: deterministic
    first = create_batch(client, upload_file(client, lines).json()["id"]).json()
    second = create_batch(client, upload_file(client, lines).json()["id"]).json()
    store = client.app.state.service.store
    dataset = store.batch(first["id"])[1]
    assert store.batch(second["id"])[1] == dataset
    validate_batch(pipeline, instance, client, first["id"])

    finish_batch(pipeline, instance, dataset, ["r0", "r1"])  # the first batch's GPU run
    for batch in (first, second):
        done = client.get(f"/v1/batches/{batch['id']}").json()
        assert done["status"] == "completed" and done["error_file_id"] is None
        assert done["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
        output = client.get(f"/v1/files/{done['output_file_id']}/content").text.splitlines()
        assert sorted(json.loads(line)["custom_id"] for line in output) == ["r0", "r1"]
    outputs = {client.get(f"/v1/batches/{b['id']}").json()["output_file_id"] for b in (first, second)}
    assert len(outputs) == 2  # each batch has its own output file


@pytest.mark.parametrize("change", ["dtype: bfloat16", "temperature: 0.0"])
def test_a_registry_change_before_a_deterministic_resubmission_creates_new_work(client, pipeline, change):
    """The reuse key holds the engine's fingerprint: other weights dtype or default sampling, other results."""
    lines = [request_line(f"r{i}") for i in range(2)]
    store = client.app.state.service.store
    first = store.batch(create_batch(client, upload_file(client, lines).json()["id"]).json()["id"])[1]
    registry = pipeline.layout.registry
    replacement = {"dtype: bfloat16": "dtype: float32", "temperature: 0.0": "temperature: 0.0\n      top_p: 0.5"}
    registry.write_text(registry.read_text().replace(change, replacement[change]))
    second = store.batch(create_batch(client, upload_file(client, lines).json()["id"]).json()["id"])[1]
    assert second != first
    again = store.batch(create_batch(client, upload_file(client, lines).json()["id"]).json()["id"])[1]
    assert again == second  # unchanged since: reused


def test_new_weights_under_the_same_name_create_new_work(client, pipeline, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    registry = pipeline.layout.registry
    registry.write_text(registry.read_text().replace(str(EMBEDDED_MODEL_DIR), str(weights)))
    lines = [request_line("r0")]
    store = client.app.state.service.store
    first = store.batch(create_batch(client, upload_file(client, lines).json()["id"]).json()["id"])[1]
    (weights / "model.safetensors").write_bytes(b"new weights")
    second = store.batch(create_batch(client, upload_file(client, lines).json()["id"]).json()["id"])[1]
    assert second != first


def test_sampled_batches_are_generated_afresh(client):
    lines = [request_line(f"r{i}", temperature=0.8) for i in range(2)]
    store = client.app.state.service.store
    datasets = {store.batch(create_batch(client, upload_file(client, lines).json()["id"]).json()["id"])[1] for _ in range(2)}
    assert len(datasets) == 2
    seeded = [request_line(f"r{i}", temperature=0.8, seed=5) for i in range(2)]
    datasets = {store.batch(create_batch(client, upload_file(client, seeded).json()["id"]).json()["id"])[1] for _ in range(2)}
    assert len(datasets) == 1


def test_a_stop_request_names_the_run_it_is_for(tmp_path):
    stop = tmp_path / "STOP"
    assert not stop_requested(stop, "run-1")
    request_stop(stop, "run-1")
    assert stop_requested(stop, "run-1") and not stop_requested(stop, "run-2")


@ON_BOTH_STORES
def test_cancelling_one_of_twin_batches_never_stops_the_run_the_other_waits_for(client, pipeline, instance):
    lines = [request_line(f"r{i}") for i in range(2)]
    first, second = (create_batch(client, upload_file(client, lines).json()["id"]).json() for _ in range(2))
    dataset = validate_batch(pipeline, instance, client, first["id"])
    paths = pipeline.layout.responses(dataset, MODEL)
    run = started_run(instance, dataset, first["id"])
    ChunkStore(paths.chunks).write(0, answer_rows({0: "r0"}))  # one row done so far
    service = client.app.state.service

    cancelled = client.post(f"/v1/batches/{first['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_at"]
    output = client.get(f"/v1/files/{cancelled['output_file_id']}/content").text.splitlines()
    assert [json.loads(line)["custom_id"] for line in output] == ["r0"]
    # Every request it never ran is a `batch_cancelled` line, and the counts add up (as OpenAI's do).
    errors = [json.loads(line) for line in client.get(f"/v1/files/{cancelled['error_file_id']}/content").text.splitlines()]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("r1", "batch_cancelled")]
    assert cancelled["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    service.refresh_active()
    assert not paths.stop_request.exists()
    assert client.get(f"/v1/batches/{second['id']}").json()["status"] == "in_progress"

    # Once the last batch waiting for the run is cancelled too, nobody wants it any more.
    assert client.post(f"/v1/batches/{second['id']}/cancel").json()["status"] == "cancelled"
    service.refresh_active()
    assert stop_requested(paths.stop_request, run.run_id)


@ON_BOTH_STORES
def test_a_run_launched_for_an_already_cancelled_batch_is_stopped(client, pipeline, instance):
    batch = create_batch(client, upload_file(client, [request_line("a")]).json()["id"]).json()
    dataset = validate_batch(pipeline, instance, client, batch["id"])
    assert client.post(f"/v1/batches/{batch['id']}/cancel").json()["status"] == "cancelled"
    # The shim sensor read the batch before it was cancelled; its run shows up only now.
    run = started_run(instance, dataset, batch["id"])
    client.app.state.service.refresh_active()
    stop = pipeline.layout.responses(dataset, MODEL).stop_request
    assert stop.read_text() == run.run_id and stop_requested(stop, run.run_id)


def test_a_batch_failing_to_finish_never_stalls_the_others_and_recovers(client, pipeline, instance, monkeypatch,
                                                                        caplog):
    broken, healthy = (create_batch(client, upload_file(client, [request_line(custom_id)]).json()["id"]).json()
                       for custom_id in ("x", "y"))
    datasets = {batch["id"]: validate_batch(pipeline, instance, client, batch["id"]) for batch in (broken, healthy)}
    service = client.app.state.service
    service.refresh_active()
    for batch in (broken, healthy):
        finish_batch(pipeline, instance, datasets[batch["id"]], [f"{batch['id']}-row"])
    broken_errors = pipeline.layout.responses(datasets[broken["id"]], MODEL).errors
    copy = shutil.copyfile

    def copy_failing_for_the_broken_batch(source, target, *args, **kwargs):
        if Path(source) == broken_errors:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return copy(source, target, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copy_failing_for_the_broken_batch)
    with caplog.at_level(logging.WARNING, logger="batch_pipeline.api.service"):
        service.refresh_active()
    assert client.get(f"/v1/batches/{healthy['id']}").json()["status"] == "completed"
    stuck = client.get(f"/v1/batches/{broken['id']}").json()
    assert stuck["status"] == "in_progress" and stuck["finalizing_at"] is None
    [error] = stuck["errors"]["data"]
    assert error["code"] == "refresh_failed" and "No space left on device" in error["message"]
    assert any(broken["id"] in record.getMessage() for record in caplog.records)
    health = client.get("/health").json()
    assert health["status"] == "degraded"
    assert [failure["batch_id"] for failure in health["refresh_failures"]] == [broken["id"]]
    assert "No space left on device" in health["refresh_failures"][0]["message"]

    files = sorted(service.files.folder.iterdir())
    for _ in range(3):
        service.refresh_active()
    assert sorted(service.files.folder.iterdir()) == files  # each attempt replaced the last one's files

    monkeypatch.undo()
    service.refresh_active()
    done = client.get(f"/v1/batches/{broken['id']}").json()
    assert done["status"] == "completed" and done["errors"] is None and done["finalizing_at"]
    assert done["output_file_id"] == batch_file_id(broken["id"], "output")
    outputs = [f["filename"] for f in client.get("/v1/files", params={"purpose": "batch_output"}).json()["data"]]
    assert sorted(outputs) == sorted(f"{batch['id']}_output.jsonl" for batch in (broken, healthy))
    assert len(list(service.files.folder.iterdir())) == 4  # two uploads, two outputs: nothing else
    health = client.get("/health").json()
    assert health.pop("refresh")["stalled"] is False
    assert health == {"status": "ok", "shim": "ok", "dagster_instance": "ok", "detail": None, "refresh_failures": [],
                      "webhook_failures": []}


def test_other_requests_answer_while_a_large_input_is_placed(client, monkeypatch):
    create_batch(client, upload_file(client, [request_line("small")]).json()["id"])  # listing batches refreshes it
    head, tail = json.dumps(request_line("ID")).split('"ID"')
    large = "".join(f'{head}"r{i}"{tail}\n' for i in range(150_000)).encode()  # ~40 MB
    file_id = client.post("/v1/files", files={"file": ("large.jsonl", large, "application/jsonl")},
                          data={"purpose": "batch"}).json()["id"]
    placing, answered = threading.Event(), threading.Event()
    place = service_module.place_batch_input

    def place_while_others_ask(*args, **kwargs):
        placing.set()
        dataset = place(*args, **kwargs)
        answered.wait(timeout=30)  # the create stays in progress until the other requests are answered
        return dataset

    monkeypatch.setattr(service_module, "place_batch_input", place_while_others_ask)
    created = []
    creating = threading.Thread(target=lambda: created.append(create_batch(client, file_id)))
    creating.start()
    try:
        assert placing.wait(timeout=60)
        for path in ("/v1/batches", "/health"):
            started = time.monotonic()
            assert client.get(path).status_code == 200
            assert time.monotonic() - started < 1.0, f"{path} waited for the create"
    finally:
        answered.set()
        creating.join(timeout=120)
    assert created[0].status_code == 200


def test_json_bodies_over_the_limit_are_refused_with_or_without_a_length(pipeline, instance):
    with shim_client(pipeline, instance, shim_max_json_bytes=2000) as client:
        file_id = upload_file(client, [request_line("a")]).json()["id"]
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        large = json.dumps({**body, "metadata": {"k": "v" * 500, **{f"k{i}": "v" * 500 for i in range(5)}}}).encode()
        declared = client.post("/v1/batches", content=large, headers={"content-type": "application/json"})
        chunked = client.post("/v1/batches", content=iter([large]), headers={"content-type": "application/json"})
        small = client.post("/v1/batches", content=iter([json.dumps(body).encode()]),
                            headers={"content-type": "application/json"})
    for response in (declared, chunked):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert small.status_code == 200 and small.json()["status"] == "validating"


def test_the_gatekeeper_reads_a_chunked_body_only_up_to_the_limit():
    async def echo(scope, receive, send):
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message["body"], message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    gate = Gatekeeper(echo, api_key=None, allowed_hosts=(), max_upload_bytes=10_000, max_json_bytes=1000)

    async def call(chunks: list[bytes]) -> tuple[int, bytes, int]:
        pending, sent = list(chunks), []

        async def receive():
            return {"type": "http.request", "body": pending.pop(0), "more_body": bool(pending)}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/batches", "headers": [(b"host", b"127.0.0.1:4080")]}
        await gate(scope, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), len(pending)

    assert anyio.run(call, [b"a" * 300] * 3) == (200, b"a" * 900, 0)  # replayed to the app unchanged
    status, _, unread = anyio.run(call, [b"a" * 300] * 10)
    assert status == 413 and unread == 6  # stopped after the chunk that passed the limit


@pytest.mark.parametrize("where", ["spooling the request", "storing the file"])
def test_a_full_disk_leaves_no_partial_upload(client, pipeline, monkeypatch, where):
    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "storing the file":
        monkeypatch.setattr(storage, "_fsync_file", disk_full)  # once the bytes were written
    else:
        monkeypatch.setattr(UploadFile, "write", disk_full)
    response = upload_file(client, [request_line(f"r{i}") for i in range(50)])
    assert response.status_code == 507
    error = response.json()["error"]
    assert error["code"] == "insufficient_storage" and "disk is full" in error["message"]
    assert not list((pipeline.layout.shim / "files").iterdir())
    assert client.get("/v1/files").json()["data"] == []


@pytest.mark.parametrize("host, key, allowed, refused", [
    ("127.0.0.1", None, False, False), ("::1", None, False, False), ("localhost", None, False, False),
    ("0.0.0.0", None, False, True), ("192.168.1.5", None, False, True), ("example.org", None, False, True),
    ("0.0.0.0", KEY, False, False), ("0.0.0.0", None, True, False),
])
def test_the_shim_listens_beyond_this_machine_only_with_a_key_or_when_told(host, key, allowed, refused):
    settings = Settings(shim_host=host, shim_api_key=key, shim_allow_unauthenticated=allowed)
    assert (listen_refusal(settings) is not None) == refused
    assert is_loopback(host) == (host in {"127.0.0.1", "::1", "localhost"})


def test_the_shim_refuses_to_start_on_a_public_address_without_a_key(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "BATCH_PIPELINE_DATA": str(tmp_path), "BATCH_PIPELINE_SHIM_HOST": "0.0.0.0",
           "BATCH_PIPELINE_SHIM_API_KEY": ""}
    result = subprocess.run([sys.executable, "-m", "batch_pipeline.api"], env=env, capture_output=True, text=True,
                            timeout=120, cwd=PROJECT_ROOT)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "BATCH_PIPELINE_SHIM_ALLOW_UNAUTHENTICATED" in result.stderr
