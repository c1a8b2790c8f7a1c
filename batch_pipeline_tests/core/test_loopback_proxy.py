"""Calls to our own loopback services never go through a proxy named by HTTP_PROXY: on a proxied
machine they would reach the proxy, which cannot see this machine's 127.0.0.1."""

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import httpx
import pytest

from batch_pipeline.core.loopback import LOOPBACK, answers, direct_client, free_port
from batch_pipeline.core.processes import ProcessIdentity
from batch_pipeline.generation.engine.host_auth import IDENTITY_PATH, proof
from batch_pipeline.generation.engine.server import serves
from batch_pipeline.generation.engine.server_state import ServerState, served_name

_SECRET = "a-host-secret"


class _Models(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        path, _, query = self.path.partition("?")
        if path == IDENTITY_PATH:  # what a warm engine host answers a run checking it
            nonce = parse_qs(query)["nonce"][0]
            body = json.dumps({"served": served_name("f"), "proof": proof(_SECRET, nonce, served_name("f"))}).encode()
        else:
            body = json.dumps({"data": [{"id": served_name("f")}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def service():
    server = ThreadingHTTPServer((LOOPBACK, 0), _Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{LOOPBACK}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def dead_proxy(monkeypatch):
    proxy = f"http://{LOOPBACK}:{free_port()}"  # nothing listens there
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_the_proxy_is_really_in_the_way_of_plain_clients(service, dead_proxy):
    # A fresh opener, as urlopen's first call builds one: urlopen's own is built once per process and kept.
    with pytest.raises(urllib.error.URLError):
        urllib.request.build_opener().open(f"{service}/v1/models", timeout=5)
    with pytest.raises(httpx.TransportError), httpx.Client() as client:
        client.get(f"{service}/v1/models")


def test_loopback_calls_ignore_the_proxy(service, dead_proxy):
    assert answers(f"{service}/v1/models")
    with direct_client(base_url=service) as client:
        assert client.get("/v1/models").json()["data"] == [{"id": served_name("f")}]
    # How a run checks the warm engine host before it sends it anything.
    state = ServerState(status="ready", supervisor=ProcessIdentity(pid=1, started_at=0),
                        port=int(service.rsplit(":", 1)[1]), fingerprint="f", started_by_model="m", started_at=0)
    assert serves(state, _SECRET)
