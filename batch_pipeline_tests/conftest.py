import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import anyio
import pytest

from batch_pipeline.core.resources import PipelineConfig

# anyio imports its parts on first use, and pytest parses (rewrites) them on import, anyio being a
# pytest plugin. CPython 3.11.7's ast.parse is not thread-safe (gh-106905): the first file response
# of a TestClient, imported in its portal thread, failed at random with "AST constructor recursion
# depth mismatch". Every part is imported here, in the main thread, before any test starts a thread.
for _name in dir(anyio):
    getattr(anyio, _name)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_MODEL_DIR = PROJECT_ROOT / "data" / "models" / "SmolLM2-135M-Instruct"
MODEL = "SmolLM2-135M-Instruct"

# Eager mode starts the engine faster than compiling; short answers keep the suite quick.
TEST_REGISTRY = f"""
models:
  {MODEL}:
    engine:
      model: {EMBEDDED_MODEL_DIR}
      dtype: bfloat16
      max_model_len: 2048
      enforce_eager: true
    sampling:
      max_tokens: 16
      temperature: 0.0
"""

# The embedded model as a second engine (other weights dtype), for model swaps and queue order.
FP32_MODEL = "SmolLM2-fp32"
TWO_ENGINE_REGISTRY = TEST_REGISTRY + f"""  {FP32_MODEL}:
    engine:
      model: {EMBEDDED_MODEL_DIR}
      dtype: float32
      max_model_len: 2048
      enforce_eager: true
    sampling:
      max_tokens: 16
      temperature: 0.0
"""

# The embedded embedding model, for /v1/embeddings batches.
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
EMBEDDING_ENTRY = f"""  {EMBEDDING_MODEL}:
    task: embed
    engine:
      model: {PROJECT_ROOT / "data" / "models" / EMBEDDING_MODEL}
      dtype: float32
      enforce_eager: true
"""

# A LoRA adapter for the embedded model, made by the `lora_adapter` fixture.
ADAPTER = "smol-random-lora"

_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain recursion to a child in one sentence.",
    "List three fruits that are red.",
    "Give a synonym for 'happy'.",
]


def request_line(custom_id: str, model: str = MODEL, **body_fields) -> dict:
    index = sum(map(ord, custom_id))
    body = {"model": model, "messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": _PROMPTS[index % len(_PROMPTS)]},
    ]}
    body.update(body_fields)
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_jsonl(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def write_batch(path: Path, count: int, **body_fields) -> Path:
    """`count` distinct requests: none is a copy another's answer would serve (generation.feed)."""
    lines = [request_line(f"req-{i:05d}", **body_fields) for i in range(count)]
    for index, line in enumerate(lines):
        line["body"]["messages"][-1]["content"] += f" (question {index})"
    return write_jsonl(path, lines)


def materialize_cell(pipeline: PipelineConfig, dataset: str, lines: list, models: tuple[str, ...] = (MODEL,)):
    """Writes `lines` as the dataset's input, then materializes its requests and its responses for each
    of `models`, in order, on one instance; returns the last responses materialization."""
    from dagster import instance_for_test, materialize

    from batch_pipeline.core.partitions import DATASETS, MODELS, dataset_model_key
    from batch_pipeline.generation.assets import batch_responses
    from batch_pipeline.intake.assets import batch_requests

    write_jsonl(pipeline.layout.dataset(dataset).input, lines)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(DATASETS.name, [dataset])
        instance.add_dynamic_partitions(MODELS.name, list(models))
        resources = {"pipeline": pipeline}
        assert materialize([batch_requests], partition_key=dataset, instance=instance, resources=resources).success
        for model in models:
            result = materialize([batch_requests, batch_responses], selection=[batch_responses],
                                 partition_key=dataset_model_key(dataset, model), instance=instance,
                                 resources=resources)
            assert result.success
    return result


def wait_for(predicate, timeout: float, what: str, process: subprocess.Popen):
    """Polls until `predicate` returns something truthy; fails early if `process` (the service
    under test) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args[0]} exited while waiting for {what}"
        if value := predicate():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def orphaned_engine(owner: str, title: str = "VLLM::EngineCore", slot: str | None = None) -> int:
    """A process titled like an engine process whose parent died, as a killed run worker or engine
    supervisor leaves it, marked with the data folder (and slot) it was started for."""
    import psutil

    from batch_pipeline.core.processes import ENGINE_OWNER_ENV, ENGINE_SLOT_ENV

    environment = {key: value for key, value in os.environ.items() if key != ENGINE_SLOT_ENV}
    environment[ENGINE_OWNER_ENV] = owner
    if slot is not None:
        environment[ENGINE_SLOT_ENV] = slot
    started = subprocess.run(["bash", "-c", f"(exec -a '{title}' sleep 300) >/dev/null 2>&1 & echo $!"],
                             env=environment, capture_output=True, text=True, check=True)
    pid = int(started.stdout)
    deadline = time.monotonic() + 10
    while psutil.Process(pid).ppid() != 1:
        assert time.monotonic() < deadline, "the stand-in engine was not reparented to init"
        time.sleep(0.05)
    return pid


def gpu_runs_by_creation(instance) -> list:
    """Every GPU run record of the instance, oldest first."""
    from batch_pipeline.queue.runs import is_gpu_run

    return sorted((r for r in instance.get_run_records() if is_gpu_run(r.dagster_run)),
                  key=lambda r: r.create_timestamp)


def engine_reused(instance, run_id: str) -> bool:
    """Whether the run's `batch_responses` materialization reused a loaded engine."""
    from dagster import DagsterEventType

    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    return records[0].event_log_entry.asset_materialization.metadata["engine_reused"].value


def processes_mentioning(path: Path) -> list:
    """Processes whose command line names `path`: a test's services, engine servers and supervisors."""
    import psutil

    return [p for p in psutil.process_iter(["cmdline"]) if str(path) in " ".join(p.info["cmdline"] or [])]


def fail_renames_of(monkeypatch, name: str) -> None:
    """Renaming the inbox file `name` fails as it does across filesystems (EXDEV); others move."""
    import errno

    from batch_pipeline.intake import inbox

    real_replace = os.replace

    def replace(source, target):
        if Path(source).name == name:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(source), None, str(target))
        real_replace(source, target)

    monkeypatch.setattr(inbox.os, "replace", replace)


def ui_launched_run(instance, dataset: str, model: str):
    """A GPU run as the UI's Materialize button or a backfill makes it (the asset job, not ours),
    once it holds the GPU."""
    from dagster import DagsterRun, DagsterRunStatus

    from batch_pipeline.core.names import RESPONSES_ASSET
    from batch_pipeline.core.partitions import DATASET_MODELS, dataset_model_key

    run = DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                     asset_selection=frozenset({RESPONSES_ASSET}),
                     tags=DATASET_MODELS.get_tags_for_partition_key(dataset_model_key(dataset, model)))
    return instance.add_run(run)


POSTGRES_SERVER = "postgresql://postgres@127.0.0.1:5432"
# Set by .ci/run: a PostgreSQL that does not answer fails these tests instead of skipping them.
REQUIRE_POSTGRES_ENV = "BATCH_PIPELINE_TEST_REQUIRE_POSTGRES"


@pytest.fixture
def postgres_url():
    """A fresh database on the local PostgreSQL, dropped afterwards."""
    import psycopg2

    try:
        admin = psycopg2.connect(f"{POSTGRES_SERVER}/postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        reason = f"no PostgreSQL answers at {POSTGRES_SERVER} (trust auth expected): {str(exc).strip()}"
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRE_POSTGRES_ENV}=1 makes this mandatory")
        pytest.skip(reason)
    name = f"batch_pipeline_test_{uuid.uuid4().hex[:12]}"
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield f"{POSTGRES_SERVER}/{name}"
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    (root / "registry.yaml").write_text(TEST_REGISTRY)
    return root


@pytest.fixture
def pipeline(data_root: Path) -> PipelineConfig:
    # One engine serves every in-process engine test; it is freed when the session ends.
    return PipelineConfig(data_dir=str(data_root), inbox_settle_seconds=0, keep_engine_loaded=True,
                          engine_mode="in_process")


@pytest.fixture
def server_pipeline(data_root: Path):
    """Runs served by the long-lived vLLM server; the server goes when the test ends."""
    from batch_pipeline.generation.engine.server import stop_server
    from batch_pipeline.generation.engine.server_state import ServerFiles

    config = PipelineConfig(data_dir=str(data_root), inbox_settle_seconds=0, engine_mode="server")
    yield config
    stop_server(ServerFiles(config.layout.engine_server))


@pytest.fixture(scope="session")
def lora_adapter(tmp_path_factory) -> Path:
    """A rank-8 adapter on the attention projections, randomly initialised (not the no-op default),
    so its answers must differ from the base model's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("adapter") / ADAPTER
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_DIR, dtype=torch.bfloat16)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def _free_the_shared_engine():
    yield
    from batch_pipeline.generation.engine.factory import release_engine

    release_engine()


def pytest_collection_modifyitems(items):
    """Process-spawning engine tests run before the in-process shared engine exists, so two
    engines never share the machine."""
    rank = {"e2e": 1, "engine_subprocess": 2, "engine_server": 3, "engine": 4}

    def order(item):
        marks = [rank[m.name] for m in item.iter_markers() if m.name in rank]
        return min(marks) if marks else 0

    items.sort(key=order)
