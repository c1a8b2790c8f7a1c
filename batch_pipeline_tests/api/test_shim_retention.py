"""Batch and file fields through the official openai client: `expires_after` and `output_expires_after`
with real retention, `metadata` limits, `model` and `usage` details."""

import time

import openai
import pytest
from dagster import SkipReason, build_sensor_context
from fastapi.testclient import TestClient
from openai import OpenAI

from batch_pipeline.api import clock
from batch_pipeline.api.retention import build_file_retention_sensor, purge_expired_files
from batch_pipeline_tests.support.batches import request_line
from batch_pipeline_tests.support.models import MODEL
from batch_pipeline_tests.support.shim_client import (
    create_batch,
    finish_batch,
    jsonl_bytes,
    shim_client,
    upload_file,
    validate_batch,
)

HOUR = 3600
DAY = 24 * HOUR


def _openai(client: TestClient) -> OpenAI:
    """The official client, speaking to the app in process (TestClient is an httpx.Client)."""
    return OpenAI(base_url="http://localhost/v1", api_key="unused", http_client=client)


def _upload_with(client: TestClient, **form) -> dict:
    return client.post("/v1/files", files={"file": ("a.jsonl", jsonl_bytes([request_line("a")]), "application/jsonl")},
                       data={"purpose": "batch", **form})


def test_an_expired_upload_answers_404_at_once_and_retention_deletes_its_bytes(client, monkeypatch):
    api = _openai(client)
    upload = api.files.create(file=("a.jsonl", jsonl_bytes([request_line("a")])), purpose="batch",
                              expires_after={"anchor": "created_at", "seconds": HOUR})
    kept = api.files.create(file=("b.jsonl", jsonl_bytes([request_line("b")])), purpose="batch")
    assert upload.expires_at == upload.created_at + HOUR and kept.expires_at == kept.created_at + 30 * DAY
    store = client.app.state.service.store
    _, path = store.file(upload.id)
    assert purge_expired_files(store, upload.expires_at - 1) == []

    monkeypatch.setattr(clock, "now", lambda: upload.expires_at)
    assert client.get(f"/v1/files/{upload.id}").status_code == 404
    assert client.get(f"/v1/files/{upload.id}/content").json()["error"]["code"] == "file_not_found"
    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == [kept.id]
    assert create_batch(client, upload.id).status_code == 404
    assert path.exists()  # answering 404 frees nothing; retention does

    assert purge_expired_files(store, upload.expires_at) == [upload.id]
    assert not path.exists() and store.file(upload.id) is None
    assert api.files.content(kept.id).content == jsonl_bytes([request_line("b")])


def test_the_retention_sensor_deletes_expired_files(client, pipeline, instance, monkeypatch):
    def tick():
        return build_file_retention_sensor(60)(build_sensor_context(instance=instance,
                                                                    resources={"pipeline": pipeline}))

    service = client.app.state.service
    monkeypatch.setattr(clock, "now", lambda: int(time.time()) - 2 * HOUR)
    expired = _upload_with(client, **{"expires_after[anchor]": "created_at", "expires_after[seconds]": str(HOUR)})
    monkeypatch.undo()
    fresh = _upload_with(client, **{"expires_after[anchor]": "created_at", "expires_after[seconds]": str(HOUR)})
    _, expired_path = service.store.file(expired.json()["id"])

    result = tick()
    assert isinstance(result, SkipReason) and result.skip_message == "deleted 1 expired file(s)"
    assert not expired_path.exists() and service.store.file(expired.json()["id"]) is None
    assert client.get(f"/v1/files/{fresh.json()['id']}").status_code == 200
    assert tick().skip_message == "no file has expired"


def test_the_retention_sensor_waits_for_the_shim(tmp_path, instance):
    from batch_pipeline.core.resources import PipelineConfig

    context = build_sensor_context(instance=instance, resources={"pipeline": PipelineConfig(data_dir=str(tmp_path))})
    assert build_file_retention_sensor(60)(context).skip_message == "the shim has no files"


@pytest.mark.parametrize("form, param", [
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}, "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": str(31 * 24 * HOUR)}, "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"}, "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at"}, "expires_after.seconds"),
    ({"expires_after[anchor]": "last_active_at", "expires_after[seconds]": str(HOUR)}, "expires_after.anchor"),
])
def test_a_bad_expires_after_is_a_400_naming_the_field_and_keeps_nothing(client, pipeline, form, param):
    response = _upload_with(client, **form)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param and param in response.json()["error"]["message"]
    assert not list((pipeline.layout.shim / "files").iterdir())


def test_output_files_expire_as_the_batch_asked_and_the_batch_shows_model_and_usage(client, pipeline, instance):
    api = _openai(client)
    upload = api.files.create(file=("a.jsonl", jsonl_bytes([request_line("a"), request_line("b")])), purpose="batch")
    batch = api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
                               output_expires_after={"anchor": "created_at", "seconds": 2 * HOUR})
    assert batch.model is None  # known once the input is validated
    dataset = validate_batch(pipeline, instance, client, batch.id)
    assert api.batches.retrieve(batch.id).model == MODEL
    finish_batch(pipeline, instance, dataset, ["a", "b"])
    done = api.batches.retrieve(batch.id)
    assert done.status == "completed" and done.model == MODEL
    output = api.files.retrieve(done.output_file_id)
    assert output.expires_at == output.created_at + 2 * HOUR
    usage = done.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (10, 4, 14)
    # Our results carry no cached or reasoning token counts: zero, as OpenAI reports when there are none.
    assert usage.input_tokens_details.cached_tokens == 0 and usage.output_tokens_details.reasoning_tokens == 0
    assert api.files.retrieve(upload.id).expires_at == upload.created_at + 30 * DAY  # OpenAI's default


def test_uploads_are_kept_until_deleted_when_the_default_expiry_is_off(pipeline, instance):
    with shim_client(pipeline, instance, batch_file_expiry_days=0) as client:
        assert upload_file(client, [request_line("a")]).json()["expires_at"] is None


def test_outputs_of_a_batch_without_output_expires_after_never_expire(client, pipeline, instance):
    batch = create_batch(client, upload_file(client, [request_line("a")]).json()["id"]).json()
    finish_batch(pipeline, instance, validate_batch(pipeline, instance, client, batch["id"]), ["a"])
    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert client.get(f"/v1/files/{done['output_file_id']}").json()["expires_at"] is None


@pytest.mark.parametrize("output_expires_after, param", [
    ({"anchor": "created_at", "seconds": 60}, "output_expires_after.seconds"),
    ({"anchor": "created_at", "seconds": 30 * 24 * HOUR + 1}, "output_expires_after.seconds"),
    ({"anchor": "completed_at", "seconds": HOUR}, "output_expires_after.anchor"),
    ({"seconds": HOUR}, "output_expires_after.anchor"),
])
def test_a_bad_output_expires_after_is_a_400_naming_the_field(client, output_expires_after, param):
    file_id = upload_file(client, [request_line("a")]).json()["id"]
    with pytest.raises(openai.BadRequestError) as refused:
        _openai(client).batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                       completion_window="24h", output_expires_after=output_expires_after)
    assert refused.value.param == param


@pytest.mark.parametrize("metadata, says", [
    ({f"k{i}": "v" for i in range(17)}, "at most 16 key-value pairs, got 17"),
    ({"k" * 65: "v"}, "longer than 64 characters"),
    ({"k": "v" * 513}, "the value of 'k' is longer than 512 characters"),
])
def test_metadata_over_openai_limits_is_a_400_naming_the_field(client, metadata, says):
    response = create_batch(client, upload_file(client, [request_line("a")]).json()["id"], metadata=metadata)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "metadata" and says in error["message"]


def test_metadata_at_openai_limits_is_kept(client):
    metadata = {f"{i:02d}".ljust(64, "k"): "v" * 512 for i in range(16)}
    response = create_batch(client, upload_file(client, [request_line("a")]).json()["id"], metadata=metadata)
    assert response.status_code == 200 and response.json()["metadata"] == metadata
