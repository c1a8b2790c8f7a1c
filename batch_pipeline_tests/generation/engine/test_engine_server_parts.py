"""The long-lived server's parts that need no engine: command line, choice, idle rule, lease,
identity check and error mapping."""

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from batch_pipeline.core.processes import ProcessIdentity
from batch_pipeline.core.registry import ModelEntry
from batch_pipeline.generation.engine.host_auth import SECRET_FILE, proof
from batch_pipeline.generation.engine.server import acquire_server, serves, start_server, starting_server_for
from batch_pipeline.generation.engine.server_state import ServerFiles, ServerState, idle_expired, served_name
from batch_pipeline.generation.engine.server_supervisor import _startup_failed, host_command
from batch_pipeline.generation.engine.session import choose_engine
from batch_pipeline.generation.engine.spec import EngineSpec


def test_the_host_command_carries_the_whole_spec(tmp_path):
    spec = _spec(tmp_path, {"model": "/m", "enforce_eager": True, "max_model_len": 2048}, {"temperature": 0.3})
    command = host_command(spec, "abc", 7, tmp_path)
    assert command[command.index("--fd") + 1] == "7"
    assert command[command.index("--secret-folder") + 1] == str(tmp_path)
    assert command[command.index("--served-name") + 1] == served_name("abc")
    assert EngineSpec.model_validate_json(command[command.index("--spec") + 1]) == spec


def _spec(tmp_path, engine: dict, sampling: dict | None = None) -> EngineSpec:
    entry = ModelEntry.model_validate({"engine": engine, "sampling": sampling or {}})
    return EngineSpec.resolve("m", entry, tmp_path)


def test_engine_fingerprint_follows_engine_arguments_only(tmp_path):
    bf16 = _spec(tmp_path, {"model": "/m", "dtype": "bfloat16"})
    assert bf16.fingerprint == _spec(tmp_path, {"dtype": "bfloat16", "model": "/m"}, {"temperature": 0.5}).fingerprint
    assert bf16.fingerprint != _spec(tmp_path, {"model": "/m", "dtype": "float32"}).fingerprint
    # The platform's fixes are resolved once, for the in-process engine and the host alike.
    assert bf16.engine_kwargs["enable_chunked_prefill"] is False


@pytest.mark.parametrize("mode, rows, ready, expected", [
    ("auto", 20, False, "server"),
    ("auto", 5000, False, "in_process"),
    ("auto", 5000, True, "server"),
    ("in_process", 20, True, "in_process"),
    ("server", 5000, False, "server"),
])
def test_engine_choice(mode, rows, ready, expected):
    assert choose_engine(mode, rows, ready, in_process_min_rows=2000) == expected


def test_idle_timeout_counts_only_without_a_lease():
    assert idle_expired(now=100, last_used=40, lease_held=False, idle_seconds=60)
    assert not idle_expired(now=100, last_used=41, lease_held=False, idle_seconds=60)
    assert not idle_expired(now=1000, last_used=0, lease_held=True, idle_seconds=60)


def test_a_lease_of_a_dead_process_is_not_held(tmp_path):
    files = ServerFiles(tmp_path)
    files.take_lease()
    assert files.lease_held()
    files.release_lease()
    assert not files.lease_held() and files.last_used(default=0) > 0
    dead = subprocess.Popen(["true"])
    dead.wait()
    files.lease.write_text(ProcessIdentity(pid=dead.pid, started_at=0).model_dump_json())
    assert not files.lease_held()
    # A lease naming a live pid that belongs to another process (a reboot, a reused pid) is not held.
    files.lease.write_text(ProcessIdentity(pid=1, started_at=0).model_dump_json())
    assert not files.lease_held()


class _Models(BaseHTTPRequestHandler):
    """A stand-in host: proves its identity with `secret` for the name `served`."""

    served: str = ""
    secret: str = "stand-in-secret"

    def do_GET(self):
        nonce = parse_qs(urlsplit(self.path).query).get("nonce", [""])[0]
        body = json.dumps({"served": self.served, "proof": proof(self.secret, nonce, self.served)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _stand_in_secret(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SECRET_FILE).write_text(_Models.secret)


def test_a_run_only_talks_to_a_server_serving_its_own_engine_that_holds_its_secret():
    server = HTTPServer(("127.0.0.1", 0), _Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state = ServerState(status="ready", supervisor=ProcessIdentity(pid=2, started_at=0), port=server.server_address[1], fingerprint="abc",
                        started_by_model="m", started_at=0)
    try:
        _Models.served = served_name("abc")
        assert serves(state, _Models.secret)
        assert not serves(state, "another-hosts-secret")  # it answers, but cannot prove it is ours
        assert not serves(state, None)  # no secret file: no host of ours
        _Models.served = "engine-other"
        assert not serves(state, _Models.secret)
    finally:
        server.shutdown()
    assert not serves(state, _Models.secret)  # nothing listens any more


def test_a_server_whose_engine_failed_to_start_is_given_up_on(tmp_path):
    files = ServerFiles(tmp_path)
    assert not _startup_failed(files)
    files.log.write_text("(EngineCore pid=1) INFO loading\n")
    assert not _startup_failed(files)
    files.log.write_text("(EngineCore pid=1) ERROR [core.py:1510] EngineCore failed to start.\n")
    assert _startup_failed(files)


def test_a_run_waits_for_the_engine_make_run_started_loading_instead_of_replacing_it(tmp_path):
    """The preloaded host's supervisor is a stand-in process; the run must neither stop it nor
    start a second engine, and gets the server once it reports ready."""
    files = ServerFiles(tmp_path / "engine")
    spec = _spec(tmp_path, {"model": "/m"})
    supervisor = subprocess.Popen(["sleep", "60"])
    server = HTTPServer(("127.0.0.1", 0), _Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Models.served = served_name(spec.fingerprint)
    _stand_in_secret(files.folder)
    loading = ServerState(status="starting", supervisor=ProcessIdentity.of(supervisor.pid),
                          port=server.server_address[1], fingerprint=spec.fingerprint, started_by_model="m",
                          started_at=0)
    files.write(loading)
    assert not start_server(files, spec, idle_seconds=60, data_dir=tmp_path)  # one is already loading: nothing started
    assert starting_server_for(files, spec.fingerprint) == loading
    assert starting_server_for(files, "other-engine") is None
    ready = threading.Timer(1.0, lambda: files.write(loading.model_copy(update={"status": "ready"})))
    ready.start()
    try:
        state, reused = acquire_server(files, spec, idle_seconds=60, data_dir=tmp_path, start_timeout=30)
        assert (state.status, state.supervisor, reused) == ("ready", loading.supervisor, False)
        assert supervisor.poll() is None and files.lease_held()
    finally:
        ready.cancel()
        files.release_lease()
        server.shutdown()
        supervisor.kill()
        supervisor.wait()
    # With its supervisor gone, a "starting" record no longer counts as loading.
    assert starting_server_for(files, spec.fingerprint) is None
