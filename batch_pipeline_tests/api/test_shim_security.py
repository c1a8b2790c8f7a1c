"""The shim among neighbours: a web page can neither read (DNS rebinding) nor write (cross-site forms)
through it, /health tells strangers only up or degraded, and webhook credentials never reach a log."""

import logging

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from batch_pipeline.api.app import create_app
from batch_pipeline.api.origin import cross_site, host_allowed
from batch_pipeline.api.store import ShimStore
from batch_pipeline.api.store_engine import store_url
from batch_pipeline.api.webhooks import WebhookConfig, WebhookSender
from batch_pipeline.core.loopback import free_port
from batch_pipeline.core.redaction import redact_url
from batch_pipeline.core.settings import Settings
from batch_pipeline_tests.support.batches import request_line
from batch_pipeline_tests.support.shim_client import KEY, jsonl_bytes


def _client(pipeline, instance, **settings) -> TestClient:
    app = create_app(Settings(data_dir=pipeline.data_dir, **settings), instance, refresh_interval_seconds=3600)
    return TestClient(base_url="http://127.0.0.1:4080", app=app)


def _stored_files(pipeline) -> list:
    folder = pipeline.layout.shim / "files"
    return list(folder.iterdir()) if folder.exists() else []


def test_a_foreign_host_header_is_refused_dns_rebinding(pipeline, instance):
    with _client(pipeline, instance, shim_allowed_hosts="batch.example.org") as client:
        client.post("/v1/files", files={"file": ("a.jsonl", jsonl_bytes([request_line("a")]), "application/jsonl")},
                    data={"purpose": "batch"})
        rebinding = client.get("/v1/files", headers={"Host": "attacker.example:4080"})
        assert rebinding.status_code == 400 and rebinding.json()["error"]["code"] == "invalid_host"
        assert "file-" not in rebinding.text
        assert client.get("/health", headers={"Host": "attacker.example"}).status_code == 400
        for host in ("127.0.0.1:4080", "localhost:4080", "[::1]:4080", "batch.example.org", "Batch.Example.Org:443"):
            assert client.get("/v1/files", headers={"Host": host}).status_code == 200, host


def test_host_names():
    assert host_allowed("localhost", ()) and host_allowed("127.0.0.2:80", ()) and host_allowed("[::1]", ())
    assert not host_allowed("localhost.attacker.example", ()) and not host_allowed("", ())
    assert not host_allowed(None, ()) and not host_allowed("[::1", ())
    assert host_allowed("api.example.org:8443", ("api.example.org",))


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:8080"},  # another local site: another origin
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
])
def test_a_cross_site_upload_is_refused_without_a_key(pipeline, instance, headers):
    with _client(pipeline, instance) as client:
        response = client.post("/v1/files", headers=headers,
                               files={"file": ("a.jsonl", jsonl_bytes([request_line("a")]), "application/jsonl")},
                               data={"purpose": "batch"})
        assert response.status_code == 403 and response.json()["error"]["code"] == "cross_site_request"
        assert client.get("/v1/files", headers=headers).status_code == 403
    assert not _stored_files(pipeline)


def test_same_origin_and_non_browser_clients_are_served(pipeline, instance):
    with _client(pipeline, instance) as client:
        same_origin = {"Origin": "http://127.0.0.1:4080", "Sec-Fetch-Site": "same-origin"}
        assert client.get("/v1/files", headers=same_origin).status_code == 200
        assert client.get("/v1/files", headers={"Sec-Fetch-Site": "none"}).status_code == 200  # typed in the bar
        openai = OpenAI(base_url="http://127.0.0.1:4080/v1", api_key="not-needed", http_client=client)
        uploaded = openai.files.create(file=("a.jsonl", jsonl_bytes([request_line("a")])), purpose="batch")
        assert openai.files.retrieve(uploaded.id).id == uploaded.id


def test_cross_site_rule():
    assert not cross_site({"host": "127.0.0.1:4080"})
    assert cross_site({"host": "127.0.0.1:4080", "origin": "http://localhost:4080"})
    assert not cross_site({"host": "localhost:4080", "origin": "https://localhost:4080"})  # a TLS proxy in front


def test_health_without_the_key_says_only_up_or_degraded(pipeline, instance):
    with _client(pipeline, instance, shim_api_key=KEY) as client:
        service = client.app.state.service
        service._record_failure("batch_secret123", RuntimeError("/home/alice/private/path is broken"))
        anonymous = client.get("/health")
        assert anonymous.status_code == 200 and anonymous.json() == {"status": "degraded"}
        assert client.get("/health", headers={"Authorization": "Bearer wrong"}).json() == {"status": "degraded"}
        detailed = client.get("/health", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert detailed["status"] == "degraded" and "batch_secret123" in str(detailed["refresh_failures"])


def test_a_failing_webhook_url_with_credentials_never_reaches_a_log(pipeline, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"http://hook-user:hook-password@127.0.0.1:{free_port()}/hooks?token=tok-SECRET-1&x=2"
    store = ShimStore(store_url(pipeline.layout, None))
    sender = WebhookSender(store, WebhookConfig(url=url, key=b"k", max_attempts=2, backoff_seconds=0))
    assert not sender._attempt("evt_1", "{}", attempt=1)  # nothing listens there: refused
    quoting = WebhookSender(store, WebhookConfig(url=url, key=b"k", max_attempts=1),
                            post=lambda target, *_: (_ for _ in ()).throw(ValueError(f"cannot post to {target}")))
    assert not quoting._attempt("evt_2", "{}", attempt=1)  # an error message quoting the whole URL
    logged = caplog.text
    assert "hooks" in logged and "127.0.0.1" in logged  # where it went is still said
    for secret in ("tok-SECRET-1", "hook-password", "hook-user"):
        assert secret not in logged


def test_redacted_urls():
    assert redact_url("https://u:p@hooks.example:8443/a/b?token=t&sig=s#frag") == \
        "https://***@hooks.example:8443/a/b?token=***&sig=***"
    assert redact_url("http://hooks.example/a") == "http://hooks.example/a"
