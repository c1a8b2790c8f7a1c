"""The engine host speaks only to the pipeline that started it, with a real vLLM engine: other local
processes are refused without the host's secret, a process sitting on a port a run is pointed at is
never sent a prompt, and a malformed job is a 400 that leaves the host serving."""

import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from batch_pipeline.core.registry import load_registry
from batch_pipeline.generation.engine.environment import configure_engine_environment
from batch_pipeline.generation.engine.host_auth import SECRET_FILE
from batch_pipeline.generation.engine.host_protocol import GENERATE_PATH, HostJob
from batch_pipeline.generation.engine.interface import EngineRequest
from batch_pipeline.generation.engine.server import acquire_server, start_server, stop_server
from batch_pipeline.generation.engine.server_client import ServedEngine
from batch_pipeline.generation.engine.server_state import EngineServerError, ServerFiles
from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline.protocol.chat import CHAT_COMPLETIONS_URL
from batch_pipeline_tests.support.batches import request_line
from batch_pipeline_tests.support.models import MODEL, TWO_ENGINE_REGISTRY

pytestmark = pytest.mark.engine_server

# Another local user's process: plain HTTP to the host's port, no secret.
_STRANGER = """
import json, sys, urllib.request, urllib.error
port = int(sys.argv[1])
codes = {}
for method, path, body in [("GET", "/v1/models", None), ("GET", "/metrics", None), ("GET", "/health", None),
                           ("POST", "/v1/generate", b'{"spec": {}, "max_in_flight": 1}\\n')]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                     headers={"Authorization": "Bearer guessed"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            codes[path] = response.status
    except urllib.error.HTTPError as exc:
        codes[path] = exc.code
print(json.dumps(codes))
"""

# A process that took a port before the host (or after it died): records everything sent to it.
_IMPOSTOR = """
import http.server, json, sys
log = open(sys.argv[1], "a")
class Handler(http.server.BaseHTTPRequestHandler):
    def _record(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode(errors="replace") if length else ""
        log.write(json.dumps({"path": self.path, "auth": self.headers.get("authorization"), "body": body}) + "\\n")
        log.flush()
        payload = json.dumps({"served": sys.argv[2], "proof": "0" * 64}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
    do_GET = do_POST = _record
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A real engine host started the way a run starts one, stopped at the end."""
    root = tmp_path_factory.mktemp("host-security") / "data"
    root.mkdir()
    (root / "registry.yaml").write_text(TWO_ENGINE_REGISTRY)
    spec = EngineSpec.resolve(MODEL, load_registry(root / "registry.yaml").models[MODEL], root)
    files = ServerFiles(root / "engine")
    environment = dict(os.environ)
    try:
        try:
            configure_engine_environment(root)  # as a run does before it starts a host (the host inherits it)
            assert start_server(files, spec, idle_seconds=600, data_dir=root)
        finally:
            os.environ.clear()
            os.environ.update(environment)
        # While the engine loads, the port is already the host's: nobody else can take it.
        deadline = time.monotonic() + 60
        while (state := files.read()) is None or not state.port:
            assert time.monotonic() < deadline, "the supervisor never bound its port"
            time.sleep(0.1)
        assert state.status == "starting"
        with socket.socket() as thief, pytest.raises(OSError):
            thief.bind(("127.0.0.1", state.port))
        state, _ = acquire_server(files, spec, idle_seconds=600, data_dir=root)
        files.release_lease()
        yield files, spec, state
    finally:
        stop_server(files)


def _requests(count: int, **body) -> list[EngineRequest]:
    return [EngineRequest(row, f"r{row}", request_line(f"r{row}", **body)["body"], CHAT_COMPLETIONS_URL)
            for row in range(count)]


def test_the_secret_is_private_to_the_services_user(host):
    files, _, _ = host
    assert stat.S_IMODE(files.folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((files.folder / SECRET_FILE).stat().st_mode) == 0o600


def test_another_process_without_the_secret_is_refused(host):
    _, _, state = host
    answer = subprocess.run([sys.executable, "-c", _STRANGER, str(state.port)], capture_output=True, text=True,
                            timeout=120, check=True)
    assert json.loads(answer.stdout) == {"/v1/models": 401, "/metrics": 401, "/health": 401, "/v1/generate": 401}


def test_a_process_on_the_runs_port_is_never_sent_a_prompt_or_the_secret(host, tmp_path):
    files, spec, state = host
    log = tmp_path / "impostor.jsonl"
    impostor = subprocess.Popen([sys.executable, "-c", _IMPOSTOR, str(log), state.served_name],
                                stdout=subprocess.PIPE, text=True)
    try:
        port = int(impostor.stdout.readline())
        pointed_there = state.model_copy(update={"port": port})
        with pytest.raises(EngineServerError, match="no request was sent"):
            list(ServedEngine(pointed_there, spec, files.secret()).stream(iter(_requests(3)), 4))
    finally:
        impostor.kill()
        impostor.wait()
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert [entry["path"].split("?")[0] for entry in seen] == ["/v1/identity"]  # asked to prove itself, no more
    assert all(entry["auth"] is None and entry["body"] == "" for entry in seen)
    assert files.secret() not in log.read_text()


def test_a_malformed_job_is_a_400_and_the_host_then_serves_a_real_job(host):
    import httpx

    from batch_pipeline.generation.engine.host_auth import auth_headers

    files, spec, state = host
    header = HostJob(spec=spec, max_in_flight=4).model_dump_json()
    bad_line = json.dumps({"row_index": 0, "custom_id": "x", "body": {"messages": []}, "url": "/x"})
    other_engine = EngineSpec.resolve("SmolLM2-fp32", load_registry(files.folder.parent / "registry.yaml")
                                      .models["SmolLM2-fp32"], files.folder.parent)
    with httpx.Client(base_url=state.base_url, headers=auth_headers(files.secret()), timeout=60) as client:
        malformed = client.post(GENERATE_PATH, content=f"{header}\n{bad_line}\n")
        assert malformed.status_code == 400 and "/x" in malformed.json()["error"]
        assert client.post(GENERATE_PATH, content=b"").status_code == 400
        another = HostJob(spec=other_engine, max_in_flight=4).model_dump_json()
        assert client.post(GENERATE_PATH, content=f"{another}\n").status_code == 400
    results = list(ServedEngine(state, spec, files.secret()).stream(iter(_requests(4)), 4))
    assert sorted(result.request.row_index for result in results) == [0, 1, 2, 3]
    assert all(result.error is None and result.completions[0].tokens > 0 for result in results)
    assert files.read().supervisor == state.supervisor  # the same host, still up
