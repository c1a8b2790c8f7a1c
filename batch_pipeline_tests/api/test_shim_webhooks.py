"""Webhooks to a real receiver on loopback, verified with the official openai client's `webhooks.unwrap`.

The apps here run without their lifespan (no background loops) unless a test says otherwise, so each
delivery pass is the test's own call."""

import json
import logging
import time

import pytest
from fastapi.testclient import TestClient
from openai import InvalidWebhookSignatureError, OpenAI
from openai.types.webhooks import BatchCompletedWebhookEvent
from pydantic import ValidationError

from batch_pipeline.api.app import create_app
from batch_pipeline.api.store import ShimStore
from batch_pipeline.api.webhooks import decode_secret, signature_headers
from batch_pipeline.core.loopback import free_port
from batch_pipeline.core.settings import Settings
from batch_pipeline_tests.support.batches import request_line
from batch_pipeline_tests.support.shim_client import create_batch, finish_batch, upload_file, validate_batch
from batch_pipeline_tests.support.webhook_receiver import SECRET, Receiver


def _app(pipeline, instance, url: str, **settings) -> TestClient:
    settings = Settings(data_dir=pipeline.data_dir, webhook_url=url, webhook_secret=SECRET, **settings)
    return TestClient(base_url="http://localhost", app=create_app(settings, instance, refresh_interval_seconds=3600))


def _completed_batch(client: TestClient, pipeline, instance) -> str:
    batch = create_batch(client, upload_file(client, [request_line("a")]).json()["id"]).json()
    finish_batch(pipeline, instance, validate_batch(pipeline, instance, client, batch["id"]), ["a"])
    assert client.get(f"/v1/batches/{batch['id']}").json()["status"] == "completed"
    return batch["id"]


def test_a_completed_batch_is_announced_once_signed_like_openai(pipeline, instance):
    with Receiver() as receiver:
        client = _app(pipeline, instance, receiver.url)
        batch_id = _completed_batch(client, pipeline, instance)
        service = client.app.state.service
        assert service.webhooks.deliver_due() == 1
        service.refresh_active()
        client.get(f"/v1/batches/{batch_id}")
        assert service.webhooks.deliver_due() == 0
    [event] = receiver.events()
    assert isinstance(event, BatchCompletedWebhookEvent)
    batch = client.get(f"/v1/batches/{batch_id}").json()
    headers, body = receiver.received[0]
    assert json.loads(body) == {"id": event.id, "object": "event", "type": "batch.completed",
                                "created_at": batch["completed_at"], "data": {"id": batch_id}}
    assert headers["webhook-id"] == event.id and event.id.startswith("evt_")
    verifier = OpenAI(api_key="unused").webhooks
    with pytest.raises(InvalidWebhookSignatureError):
        verifier.verify_signature(body + b" ", headers, secret=SECRET)
    with pytest.raises(InvalidWebhookSignatureError):
        verifier.verify_signature(body, headers, secret="whsec_" + "b3RoZXI=")


def _cancelled(client, pipeline, instance) -> str:
    batch = create_batch(client, upload_file(client, [request_line("a")]).json()["id"]).json()
    client.post(f"/v1/batches/{batch['id']}/cancel")
    return batch["id"]


def _failed(client, pipeline, instance) -> str:
    batch = create_batch(client, upload_file(client, [request_line("a"), request_line("a")]).json()["id"]).json()
    validate_batch(pipeline, instance, client, batch["id"])
    return batch["id"]


def _expired(client, pipeline, instance) -> str:
    return create_batch(client, upload_file(client, [request_line("a")]).json()["id"]).json()["id"]


@pytest.mark.parametrize("make, status, window", [(_cancelled, "cancelled", 3600), (_failed, "failed", 3600),
                                                  (_expired, "expired", 0)])
def test_failed_expired_and_cancelled_batches_have_their_events(pipeline, instance, make, status, window):
    with Receiver() as receiver:
        client = _app(pipeline, instance, receiver.url, shim_completion_window_seconds=window)
        batch_id = make(client, pipeline, instance)
        batch = client.get(f"/v1/batches/{batch_id}").json()
        assert batch["status"] == status
        client.app.state.service.webhooks.deliver_due()
    [event] = receiver.events()
    assert (event.type, event.data.id, event.created_at) == (f"batch.{status}", batch_id, batch[f"{status}_at"])


def test_a_receiver_failing_twice_gets_the_same_event_again_after_backoff(pipeline, instance):
    with Receiver(answers=(500, 503)) as receiver:
        client = _app(pipeline, instance, receiver.url, webhook_backoff_seconds=5)
        batch_id = _completed_batch(client, pipeline, instance)
        sender, store = client.app.state.service.webhooks, client.app.state.service.store
        assert sender.deliver_due() == 0  # HTTP 500; the next attempt in 5 s
        assert sender.deliver_due() == 0 and len(receiver.received) == 1
        assert sender.deliver_due(now=time.time() + 5.5) == 0  # HTTP 503; the next in 10 s
        assert sender.deliver_due(now=time.time() + 8) == 0 and len(receiver.received) == 2
        retrying = client.get("/health").json()
        assert retrying["status"] == "degraded"
        assert [(f["batch_id"], f["attempts"], f["gave_up"]) for f in retrying["webhook_failures"]] \
            == [(batch_id, 2, False)]
        assert "HTTP 503" in retrying["webhook_failures"][0]["message"]
        assert sender.deliver_due(now=time.time() + 10.5) == 1
    events = receiver.events()  # each attempt signed afresh, each verifies
    assert len(events) == 3 and len({event.id for event in events}) == 1
    assert len({body for _, body in receiver.received}) == 1
    [row] = store.webhook_events(batch_id)
    assert row["attempts"] == 3 and row["delivered_at"] and row["last_error"] is None
    assert client.get("/health").json()["status"] == "ok"


def test_a_receiver_that_is_down_costs_bounded_attempts_then_shows_in_health(pipeline, instance, caplog):
    down = f"http://127.0.0.1:{free_port()}/hooks"  # nothing listens there
    client = _app(pipeline, instance, down, webhook_max_attempts=3, webhook_backoff_seconds=0, webhook_timeout_seconds=2)
    batch_id = _completed_batch(client, pipeline, instance)
    sender = client.app.state.service.webhooks
    with caplog.at_level(logging.WARNING, logger="batch_pipeline.api.webhooks"):
        for _ in range(6):
            assert sender.deliver_due() == 0
    [row] = client.app.state.service.store.webhook_events(batch_id)
    assert row["attempts"] == 3 and row["gave_up_at"] and row["delivered_at"] is None
    assert "attempt 3 of 3 failed" in caplog.text and "giving up" in caplog.text
    health = client.get("/health").json()
    assert health["status"] == "degraded"
    [failure] = health["webhook_failures"]
    assert failure["gave_up"] and failure["attempts"] == 3 and "ConnectError" in failure["message"]
    assert client.get(f"/v1/batches/{batch_id}").json()["status"] == "completed"  # the batch is unaffected


def test_an_event_is_sent_once_across_shim_restarts(pipeline, instance):
    with Receiver() as receiver:
        first = _app(pipeline, instance, receiver.url)
        batch_id = _completed_batch(first, pipeline, instance)  # this shim stops before delivering
        second = _app(pipeline, instance, receiver.url)
        second.app.state.service.refresh_active()
        assert second.get(f"/v1/batches/{batch_id}").json()["status"] == "completed"
        assert second.app.state.service.webhooks.deliver_due() == 1
        third = _app(pipeline, instance, receiver.url)
        assert third.app.state.service.webhooks.deliver_due() == 0
    assert [event.data.id for event in receiver.events()] == [batch_id]


def test_a_delivery_whose_record_was_lost_is_resent_with_the_same_id(pipeline, instance, monkeypatch):
    """A crash between the receiver's 2xx and recording it: Standard Webhooks receivers drop the repeat by id."""
    with Receiver() as receiver:
        client = _app(pipeline, instance, receiver.url)
        _completed_batch(client, pipeline, instance)
        sender = client.app.state.service.webhooks
        with monkeypatch.context() as patch:
            patch.setattr(ShimStore, "webhook_delivered", lambda *args: (_ for _ in ()).throw(OSError("crash")))
            with pytest.raises(OSError):
                sender.deliver_due()
        assert sender.deliver_due() == 1 and sender.deliver_due() == 0
    first, again = (headers["webhook-id"] for headers, _ in receiver.received)
    assert first == again


def test_the_shim_delivers_in_the_background(pipeline, instance):
    with Receiver() as receiver:
        settings = Settings(data_dir=pipeline.data_dir, webhook_url=receiver.url, webhook_secret=SECRET)
        with TestClient(base_url="http://localhost", app=create_app(settings, instance, refresh_interval_seconds=0.05,
                                   webhook_poll_seconds=0.05)) as client:
            batch_id = create_batch(client, upload_file(client, [request_line("a")]).json()["id"]).json()["id"]
            client.post(f"/v1/batches/{batch_id}/cancel")
            deadline = time.monotonic() + 10
            while not receiver.received and time.monotonic() < deadline:
                time.sleep(0.05)
    assert [(event.type, event.data.id) for event in receiver.events()] == [("batch.cancelled", batch_id)]


def test_without_a_url_no_event_is_recorded(pipeline, instance):
    with TestClient(base_url="http://localhost", app=create_app(Settings(data_dir=pipeline.data_dir), instance, refresh_interval_seconds=3600)) as client:
        batch_id = _completed_batch(client, pipeline, instance)
        assert client.app.state.service.webhooks is None
        assert client.app.state.service.store.webhook_events(batch_id) == []


@pytest.mark.parametrize("settings, says", [
    ({"webhook_url": "http://127.0.0.1:9/hooks"}, "BATCH_PIPELINE_WEBHOOK_SECRET is required"),
    ({"webhook_url": "127.0.0.1:9/hooks", "webhook_secret": SECRET}, "must be an http:// or https:// URL"),
    ({"webhook_url": "http://127.0.0.1:9/hooks", "webhook_secret": "whsec_not base64!"}, "is not base64"),
])
def test_webhook_settings_are_checked_at_start(tmp_path, settings, says):
    with pytest.raises(ValidationError, match=says):
        Settings(data_dir=tmp_path, **settings)


@pytest.mark.parametrize("secret", [SECRET, "a-plain-secret"])
def test_signatures_verify_with_the_openai_client_for_either_secret_form(secret):
    body = '{"id": "evt_1"}'
    headers = signature_headers(decode_secret(secret), "evt_1", int(time.time()), body)
    OpenAI(api_key="unused").webhooks.verify_signature(body, headers, secret=secret)
