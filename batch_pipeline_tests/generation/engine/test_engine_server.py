"""The long-lived vLLM server across runs, with real engines: reuse without a load, loopback only,
a dead server replaced, another engine swapped in only after the old one is gone, and the idle
timeout leaving nothing running."""

import os
import signal
import time

import psutil
import pytest
from dagster import instance_for_test, materialize

from batch_pipeline.core.partitions import DATASETS, MODELS, dataset_model_key
from batch_pipeline.core.processes import group_alive
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.generation.assets import batch_responses
from batch_pipeline.generation.engine.server import stop_server
from batch_pipeline.generation.engine.server_state import ServerFiles
from batch_pipeline.intake.assets import batch_requests
from batch_pipeline_tests.support.batches import write_batch
from batch_pipeline_tests.support.models import FP32_MODEL as FP32
from batch_pipeline_tests.support.models import MODEL, TWO_ENGINE_REGISTRY
from batch_pipeline_tests.support.processes import processes_mentioning

pytestmark = pytest.mark.engine_server


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("server") / "data"
    root.mkdir()
    (root / "registry.yaml").write_text(TWO_ENGINE_REGISTRY)
    yield root
    stop_server(ServerFiles(root / "engine"))


@pytest.fixture(scope="module")
def instance():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(MODELS.name, [MODEL, FP32])
        yield instance


def _pipeline(data_dir, idle_seconds: float = 300) -> PipelineConfig:
    return PipelineConfig(data_dir=str(data_dir), engine_mode="server", engine_idle_seconds=idle_seconds)


def _run(pipeline: PipelineConfig, instance, dataset: str, model: str = MODEL, rows: int = 8) -> dict:
    write_batch(pipeline.layout.dataset(dataset).input, rows, model=model)
    instance.add_dynamic_partitions(DATASETS.name, [dataset])
    resources = {"pipeline": pipeline}
    assert materialize([batch_requests], partition_key=dataset, instance=instance, resources=resources).success
    result = materialize([batch_requests, batch_responses], selection=[batch_responses], instance=instance,
                         partition_key=dataset_model_key(dataset, model), resources=resources)
    assert result.success
    return {k: v.value for k, v in result.asset_materializations_for_node("batch_responses")[0].metadata.items()}


def _group(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.process_iter() if _pgid(p.pid) == pid]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_the_next_run_of_the_same_engine_reuses_the_server_which_listens_on_loopback_only(data_dir, instance):
    pipeline = _pipeline(data_dir)
    first = _run(pipeline, instance, "first-0000000001")
    assert (first["engine"], first["engine_reused"]) == ("server", False) and first["engine_start_seconds"] > 0
    second = _run(pipeline, instance, "second-000000002")
    assert (second["engine_reused"], second["engine_start_seconds"]) == (True, 0.0)
    assert second["succeeded"] == 8

    state = ServerFiles(pipeline.layout.engine_server).read()
    listening = [c.laddr for p in _group(state.supervisor.pid) for c in p.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and {address.ip for address in listening} == {"127.0.0.1"}


def test_a_dead_server_is_detected_and_replaced(data_dir, instance):
    pipeline = _pipeline(data_dir)
    old = ServerFiles(pipeline.layout.engine_server).read()
    os.killpg(old.supervisor.pid, signal.SIGKILL)  # the supervisor, vLLM's API server and EngineCore
    metadata = _run(pipeline, instance, "third-0000000003")
    assert metadata["engine_reused"] is False and metadata["succeeded"] == 8
    assert ServerFiles(pipeline.layout.engine_server).read().supervisor.pid != old.supervisor.pid


def test_another_engine_replaces_the_server_and_the_idle_timeout_frees_everything(data_dir, instance):
    files = ServerFiles(data_dir / "engine")
    old = files.read()
    metadata = _run(_pipeline(data_dir, idle_seconds=5), instance, "first-0000000001", model=FP32)
    assert metadata["engine_reused"] is False and metadata["succeeded"] == 8
    assert not group_alive(old.supervisor)
    new = files.read()
    assert new.fingerprint != old.fingerprint and new.started_by_model == FP32

    deadline = time.monotonic() + 90
    while (files.read() is not None or group_alive(new.supervisor)) and time.monotonic() < deadline:
        time.sleep(1)
    assert files.read() is None and not group_alive(new.supervisor)
    assert not processes_mentioning(data_dir)
