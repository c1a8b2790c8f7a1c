"""Inputs and failures that once gave a 500 or a stack trace: each now gets a clear error, through the official
openai client where a client would meet it."""

import contextlib
import sqlite3

import openai
import pytest
from openai import OpenAI

from batch_pipeline.api.store import ShimStore
from batch_pipeline_tests.support.batches import request_line
from batch_pipeline_tests.support.poison_lines import POISON_LINES
from batch_pipeline_tests.support.shim_client import create_batch, jsonl_bytes, upload_file, validate_batch


def _openai(client) -> OpenAI:
    return OpenAI(base_url="http://localhost/v1", api_key="unused", http_client=client)


@pytest.mark.parametrize("name, line, param", POISON_LINES, ids=[case[0] for case in POISON_LINES])
def test_a_poison_line_fails_its_batch_at_validation_naming_line_and_field(pipeline, instance, client, name, line,
                                                                          param):
    api = _openai(client)
    upload = api.files.create(file=("poison.jsonl", jsonl_bytes([request_line("first"), line])), purpose="batch")
    batch = api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    validate_batch(pipeline, instance, client, batch.id)
    failed = api.batches.retrieve(batch.id)
    assert failed.status == "failed"
    assert [(error.line, error.param) for error in failed.errors.data] == [(2, param)]
    assert failed.errors.data[0].message


@pytest.mark.parametrize("body", [[], "x", 5, None])
def test_a_body_that_is_no_object_is_a_line_error_not_a_500(pipeline, instance, client, body):
    file_id = upload_file(client, [request_line("first"), {**request_line("second"), "body": body}]).json()["id"]
    created = create_batch(client, file_id)
    assert created.status_code == 200, created.text
    validate_batch(pipeline, instance, client, created.json()["id"])
    failed = client.get(f"/v1/batches/{created.json()['id']}").json()
    assert failed["status"] == "failed"
    assert [(e["line"], e["param"], e["code"]) for e in failed["errors"]["data"]] == [(2, "body", "invalid_body")]


def _sqlite_full_error() -> sqlite3.OperationalError:
    """The error SQLite itself raises when its file can grow no more."""
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        db.execute("CREATE TABLE t (blob BLOB)")
        db.execute("PRAGMA max_page_count = 2")
        try:
            db.execute("INSERT INTO t VALUES (zeroblob(100000))")
        except sqlite3.OperationalError as exc:
            assert exc.sqlite_errorcode == sqlite3.SQLITE_FULL
            return exc
    raise AssertionError("SQLite did not fill up")


def _full_database(monkeypatch) -> None:
    error = _sqlite_full_error()

    def full(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(ShimStore, "put_file", full)


def test_a_full_database_is_a_507_and_keeps_no_unrecorded_upload(pipeline, client, monkeypatch):
    kept = upload_file(client, [request_line("kept")]).json()
    _full_database(monkeypatch)
    with pytest.raises(openai.APIStatusError) as caught:
        _openai(client).files.create(file=("a.jsonl", jsonl_bytes([request_line("a")])), purpose="batch")
    assert caught.value.status_code == 507
    assert caught.value.body["code"] == "insufficient_storage" and "database is full" in caught.value.body["message"]
    assert [path.name for path in (pipeline.layout.shim / "files").iterdir()] == [f"{kept['id']}.jsonl"]


def test_a_database_that_cannot_be_used_is_a_503_with_its_reason(client, monkeypatch):
    def locked(self, *args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(ShimStore, "batches", locked)
    response = client.get("/v1/batches")
    assert response.status_code == 503 and "database is locked" in response.json()["error"]["message"]


def test_a_download_that_loses_its_file_to_retention_is_a_404(client):
    api = _openai(client)
    upload = api.files.create(file=("a.jsonl", jsonl_bytes([request_line("a")])), purpose="batch")
    _, path = client.app.state.service.store.file(upload.id)
    path.unlink()  # retention deletes the bytes first, then the record
    with pytest.raises(openai.NotFoundError) as caught:
        api.files.content(upload.id)
    assert caught.value.body["code"] == "file_not_found"


def test_a_download_keeps_its_bytes_once_started(client):
    lines = [request_line(f"r{index}") for index in range(50)]
    upload = _openai(client).files.create(file=("ü b.jsonl", jsonl_bytes(lines)), purpose="batch")
    with client.stream("GET", f"/v1/files/{upload.id}/content") as response:
        client.app.state.service.store.file(upload.id)[1].unlink()
        body = response.read()
    assert body == jsonl_bytes(lines) and response.headers["content-length"] == str(len(body))
    assert response.headers["content-disposition"] == "attachment; filename*=utf-8''%C3%BC%20b.jsonl"
