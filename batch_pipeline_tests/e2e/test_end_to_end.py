"""`make run`'s launcher with the real Dagster webserver, daemon and shim, and the real vLLM CPU
engine: a file dropped in the inbox comes back as output.jsonl, a batch submitted with the official
openai client completes, and stopping the launcher leaves no process behind."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from openai import OpenAI

from batch_pipeline.core.loopback import answers, free_port
from batch_pipeline.core.names import REQUESTS_ASSET
from batch_pipeline.queue.runs import is_gpu_run
from batch_pipeline.tools.prepare_instance import prepare_instance
from batch_pipeline_tests.support.batches import request_line, write_batch
from batch_pipeline_tests.support.dagster_runs import engine_reused
from batch_pipeline_tests.support.models import (
    ADAPTER,
    EMBEDDED_MODEL_DIR,
    EMBEDDING_ENTRY,
    EMBEDDING_MODEL,
    FP32_MODEL,
    MODEL,
    PROJECT_ROOT,
    TWO_ENGINE_REGISTRY,
)
from batch_pipeline_tests.support.processes import processes_mentioning, stop_launcher, wait_for

pytestmark = pytest.mark.e2e


def _run_openai_batch(shim_port: int, launcher: subprocess.Popen) -> None:
    client = OpenAI(base_url=f"http://127.0.0.1:{shim_port}/v1", api_key="not-needed")
    lines = [request_line(f"api-{i:03d}", temperature=0.7) for i in range(12)]
    lines[4]["body"]["tools"] = [{"type": "function", "function": {"name": "f"}}]
    upload = client.files.create(file=("questions.jsonl", "".join(json.dumps(l) + "\n" for l in lines).encode()),
                                 purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"team": "e2e"})
    assert batch.status == "validating" and batch.metadata == {"team": "e2e"}
    seen = set()

    def finished():
        current = client.batches.retrieve(batch.id)
        seen.add(current.status)
        return current if current.status in {"completed", "failed", "cancelled", "expired"} else None

    done = wait_for(finished, 600, "the API batch to finish", launcher)
    assert done.status == "completed", done
    assert "in_progress" in seen and done.in_progress_at and done.completed_at and done.finalizing_at
    output = [json.loads(l) for l in client.files.content(done.output_file_id).text.splitlines()]
    errors = [json.loads(l) for l in client.files.content(done.error_file_id).text.splitlines()]
    assert sorted(l["custom_id"] for l in output + errors) == [f"api-{i:03d}" for i in range(12)]
    assert [e["custom_id"] for e in errors] == ["api-004"]
    bodies = [l["response"]["body"] for l in output]
    assert all(b["object"] == "chat.completion" and b["choices"][0]["message"]["content"] for b in bodies)
    assert done.request_counts.model_dump() == {"total": 12, "completed": 11, "failed": 1}
    assert done.usage.output_tokens == sum(b["usage"]["completion_tokens"] for b in bodies)
    assert done.usage.input_tokens == sum(b["usage"]["prompt_tokens"] for b in bodies)
    assert done.model == MODEL
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
    assert [b.id for b in client.batches.list()] == [batch.id]


def _submit(client: OpenAI, prefix: str, count: int):
    lines = [request_line(f"{prefix}-{i:03d}", temperature=0.7, max_tokens=16) for i in range(count)]
    upload = client.files.create(file=(f"{prefix}.jsonl", "".join(json.dumps(l) + "\n" for l in lines).encode()),
                                 purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")


def _cancel_queued_and_running(shim_port: int, launcher: subprocess.Popen) -> None:
    client = OpenAI(base_url=f"http://127.0.0.1:{shim_port}/v1", api_key="not-needed")
    running, queued = _submit(client, "long", 400), _submit(client, "waiting", 5)
    wait_for(lambda: client.batches.retrieve(running.id).request_counts.completed >= 100, 600,
              "the long batch's first chunk", launcher)
    def both_in_queue():
        with urllib.request.urlopen(f"http://127.0.0.1:{shim_port}/v1/queue", timeout=5) as response:
            entries = json.load(response)["data"]
        return entries if len(entries) == 2 else None

    queue = wait_for(both_in_queue, 120, "both GPU runs in the queue", launcher)
    assert [(e["status"], e["batch_id"]) for e in queue] == [("running", running.id), ("queued", queued.id)]
    assert all(e["model"] == MODEL and e["priority"] >= 0 for e in queue)

    assert client.batches.cancel(queued.id).status in {"cancelling", "cancelled"}
    assert client.batches.cancel(running.id).status == "cancelling"
    for batch_id in (queued.id, running.id):
        wait_for(lambda: client.batches.retrieve(batch_id).status == "cancelled", 300, "cancellation", launcher)
    cancelled = client.batches.retrieve(running.id)
    assert cancelled.cancelled_at and cancelled.cancelling_at
    kept = [json.loads(l)["custom_id"] for l in client.files.content(cancelled.output_file_id).text.splitlines()]
    assert 100 <= len(kept) < 400 and len(set(kept)) == len(kept)
    assert cancelled.request_counts.completed == len(kept)
    assert client.batches.retrieve(queued.id).output_file_id is None
    return queue[0]["dataset"], queue[1]["dataset"]


def _graphql(port: int, query: str, variables: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"query": query, "variables": variables}).encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["data"]


_BACKFILL = """mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) { __typename ... on PythonError { message } } }"""
_LAUNCH = """mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) { __typename ... on PythonError { message } } }"""


def _launch_from_ui(port: int, dataset: str, model: str) -> None:
    """What the UI's Materialize button sends for one cell of the dataset x model grid."""
    tags = {"dagster/partition": f"{dataset}|{model}", "dagster/partition/dataset": dataset,
            "dagster/partition/model": model}
    result = _graphql(port, _LAUNCH, {"params": {
        "selector": {"repositoryLocationName": "batch_pipeline.definitions", "repositoryName": "__repository__",
                     "jobName": "__ASSET_JOB", "assetSelection": [{"path": ["batch_responses"]}]},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]}}})
    assert result["launchRun"]["__typename"] == "LaunchRunSuccess", result


def _backfill(port: int, partitions: list[str]) -> None:
    result = _graphql(port, _BACKFILL, {"params": {
        "partitionNames": partitions, "assetSelection": [{"path": ["batch_responses"]}]}})
    assert result["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", result


def _gpu_runs(instance: DagsterInstance) -> list:
    return sorted((r for r in instance.get_run_records() if is_gpu_run(r.dagster_run) and r.start_time),
                  key=lambda r: r.start_time)


def _queue_by_launch_path_and_model(port: int, home, launcher, long_dataset: str, waiting_dataset: str,
                                    inbox_dataset: str) -> None:
    """Runs from the UI, a backfill and the sensors share one GPU slot, and runs for the model on the
    GPU jump ahead of another model's: long (A) -> waiting (A) -> inbox (B) -> long (B)."""
    with DagsterInstance.from_config(str(home)) as instance:
        finished_before = len(_gpu_runs(instance))
        _launch_from_ui(port, long_dataset, MODEL)
        wait_for(lambda: len(_gpu_runs(instance)) > finished_before, 120, "the UI run to start", launcher)
        _backfill(port, [f"{inbox_dataset}|{FP32_MODEL}", f"{long_dataset}|{FP32_MODEL}"])
        time.sleep(3)  # the backfill daemon submits its runs first
        _launch_from_ui(port, waiting_dataset, MODEL)
        def four_finished():
            runs = _gpu_runs(instance)[finished_before:]
            return runs if len(runs) == 4 and all(r.end_time for r in runs) else None

        done = wait_for(four_finished, 900, "the four GPU runs", launcher)
        order = [tuple(r.dagster_run.tags["dagster/partition"].split("|")) for r in done]
        assert order[:2] == [(long_dataset, MODEL), (waiting_dataset, MODEL)], order
        assert set(order[2:]) == {(inbox_dataset, FP32_MODEL), (long_dataset, FP32_MODEL)}, order
        assert all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in done)
        reused = [engine_reused(instance, r.dagster_run.run_id) for r in done]
        assert reused == [True, True, False, True], reused  # one load for the model swap, none else
        spans = [(r.start_time, r.end_time) for r in _gpu_runs(instance)]
        assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans


def _examples_through_the_openai_client(shim_port: int, launcher: subprocess.Popen, data_root: Path) -> None:
    """Structured output, tools, a LoRA adapter, the completions, responses and embeddings endpoints through
    the official client; each shipped example by inbox too."""
    client = OpenAI(base_url=f"http://127.0.0.1:{shim_port}/v1", api_key="not-needed")
    examples = PROJECT_ROOT / "data" / "examples"
    shutil.copy(examples / "completions.jsonl", data_root / "inbox" / "completions-inbox.jsonl")
    shutil.copy(examples / "embeddings.jsonl", data_root / "inbox" / "embeddings-inbox.jsonl")
    for name in ("structured", "tools", "responses"):
        shutil.copy(examples / f"{name}.jsonl", data_root / "inbox" / f"{name}-inbox.jsonl")
    adapter_lines = "".join(json.dumps(request_line(f"lora-{i}", model=ADAPTER)) + "\n" for i in range(3))

    def submit(name: str, endpoint: str):
        upload = client.files.create(file=(name, (examples / name).read_bytes()), purpose="batch")
        return client.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h")

    batches = {"structured": submit("structured.jsonl", "/v1/chat/completions"),
               "completions": submit("completions.jsonl", "/v1/completions"),
               "responses": submit("responses.jsonl", "/v1/responses"),
               "embeddings": submit("embeddings.jsonl", "/v1/embeddings"),
               "tools": submit("tools.jsonl", "/v1/chat/completions"),
               "adapter": client.batches.create(
                   input_file_id=client.files.create(file=("lora.jsonl", adapter_lines.encode()), purpose="batch").id,
                   endpoint="/v1/chat/completions", completion_window="24h"),
               "mismatched": submit("completions.jsonl", "/v1/chat/completions")}
    terminal = {"completed", "failed", "cancelled", "expired"}
    done = {name: wait_for(lambda: (b := client.batches.retrieve(batch.id)).status in terminal and b, 600,
                           f"the {name} batch to finish", launcher) for name, batch in batches.items()}
    assert done["mismatched"].status == "failed"
    assert [e.code for e in done["mismatched"].errors.data] == ["mismatched_endpoint"]
    for name in ("structured", "completions", "responses", "embeddings", "tools", "adapter"):
        assert done[name].status == "completed" and done[name].request_counts.failed == 0, done[name]
    structured = [json.loads(l) for l in client.files.content(done["structured"].output_file_id).text.splitlines()]
    schema_rows = [l for l in structured if l["custom_id"].startswith("review-0")]
    assert len(schema_rows) == 6
    for line in schema_rows:
        review = json.loads(line["response"]["body"]["choices"][0]["message"]["content"])
        assert set(review) == {"name", "sentiment", "stars"} and review["sentiment"] in {"positive", "neutral", "negative"}
    completions = [json.loads(l) for l in client.files.content(done["completions"].output_file_id).text.splitlines()]
    assert {l["response"]["body"]["object"] for l in completions} == {"text_completion"}
    responses = [json.loads(l) for l in client.files.content(done["responses"].output_file_id).text.splitlines()]
    assert {l["response"]["body"]["object"] for l in responses} == {"response"}
    called = [json.loads(l) for l in client.files.content(done["tools"].output_file_id).text.splitlines()]
    calls = {l["custom_id"]: l["response"]["body"]["choices"][0]["message"]["tool_calls"] for l in called}
    assert len(calls) == 4 and all(len(c) == 1 and json.loads(c[0]["function"]["arguments"]) for c in calls.values())
    assert calls["weather-named"][0]["function"]["name"] == "get_weather"
    adapted = [json.loads(l) for l in client.files.content(done["adapter"].output_file_id).text.splitlines()]
    assert {l["response"]["body"]["model"] for l in adapted} == {ADAPTER} and len(adapted) == 3
    embedded = client.files.content(done["embeddings"].output_file_id).text.splitlines()
    vectors = {l["custom_id"]: l["response"]["body"]["data"] for l in map(json.loads, embedded)}
    assert len(vectors) == 4 and all(len(v[0]["embedding"]) == 384 for k, v in vectors.items() if k != "compact")
    assert len(vectors["queries"]) == 3 and isinstance(vectors["compact"][0]["embedding"], str)
    inbox = wait_for(lambda: next(data_root.glob(f"datasets/completions-inbox-*/responses/{MODEL}/output.jsonl"), None),
                     600, "the inbox completions output", launcher)
    assert len(inbox.read_text().splitlines()) == 4
    for name, model, count in (("embeddings", EMBEDDING_MODEL, 4), ("structured", MODEL, 7), ("tools", MODEL, 4),
                               ("responses", MODEL, 4)):
        inbox = wait_for(lambda: next(data_root.glob(f"datasets/{name}-inbox-*/responses/{model}/output.jsonl"), None),
                         600, f"the inbox {name} output", launcher)
        assert len(inbox.read_text().splitlines()) == count


def test_inbox_file_and_openai_client_batch_through_the_daemon(data_root, tmp_path, lora_adapter):
    # A third engine: the embedded model with LoRA enabled for one adapter.
    lora_entry = f"""  SmolLM2-lora:
    engine: {{model: {EMBEDDED_MODEL_DIR}, dtype: bfloat16, max_model_len: 2048, enforce_eager: true}}
    sampling: {{max_tokens: 16, temperature: 0.0}}
    adapters:
      {ADAPTER}: {{path: {lora_adapter}}}
"""
    (data_root / "registry.yaml").write_text(TWO_ENGINE_REGISTRY + EMBEDDING_ENTRY + lora_entry)
    home = tmp_path / "dagster_home"
    prepare_instance(home, postgres_url=None)
    port, shim_port = free_port(), free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "BATCH_PIPELINE_DATA": str(data_root),
           "BATCH_PIPELINE_SENSOR_INTERVAL": "1", "BATCH_PIPELINE_INBOX_SETTLE_SECONDS": "0.5",
           # Fewer requests in flight than a chunk holds, so a long batch is mid-way long enough to cancel.
           "BATCH_PIPELINE_MAX_IN_FLIGHT": "32"}
    log = (tmp_path / "launcher.log").open("w")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "batch_pipeline.cli", "serve", "--port", str(port), "--shim-port", str(shim_port),
         "--no-demo"],
        cwd=PROJECT_ROOT, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/server_info"), 120, "the webserver", launcher)
        wait_for(lambda: answers(f"http://127.0.0.1:{shim_port}/health"), 60, "the shim", launcher)
        write_batch(data_root / "inbox" / "e2e.jsonl.part", 30)
        os.replace(data_root / "inbox" / "e2e.jsonl.part", data_root / "inbox" / "e2e.jsonl")
        output = wait_for(lambda: next(data_root.glob(f"datasets/e2e-*/responses/{MODEL}/output.jsonl"), None),
                           600, "output.jsonl", launcher)
        lines = [json.loads(line) for line in output.read_text().splitlines()]
        assert sorted(line["custom_id"] for line in lines) == [f"req-{i:05d}" for i in range(30)]
        assert not (data_root / "inbox" / "e2e.jsonl").exists()
        # `make run` started loading the registry's first model before any run asked for it.
        assert f"loading {MODEL} ahead of the first batch" in (tmp_path / "launcher.log").read_text()

        with DagsterInstance.from_config(str(home)) as instance:
            wait_for(lambda: instance.get_runs(RunsFilter(job_name="generate_responses",
                                                          statuses=[DagsterRunStatus.SUCCESS])),
                     60, "the GPU run to be recorded as successful", launcher)
            # The file passed validation in the inbox sensor's tick: no ingest run was needed.
            assert not instance.get_runs(RunsFilter(job_name="ingest_batch"))
            [requests] = instance.fetch_materializations(REQUESTS_ASSET, limit=10).records
            assert requests.asset_materialization.metadata["ingested_by"].value == "inbox_sensor"

        _run_openai_batch(shim_port, launcher)
        _examples_through_the_openai_client(shim_port, launcher, data_root)
        long_dataset, waiting_dataset = _cancel_queued_and_running(shim_port, launcher)
        _queue_by_launch_path_and_model(port, home, launcher, long_dataset, waiting_dataset, output.parent.parent.parent.name)
    finally:
        stop_launcher(launcher, log)
    time.sleep(1)
    leftovers = subprocess.run(["pgrep", "-g", str(launcher.pid)], capture_output=True, text=True).stdout
    assert leftovers == "", f"processes left behind: {leftovers}"
    assert not (data_root / "engine" / "server.json").exists()
    assert not processes_mentioning(data_root)
    assert not answers(f"http://127.0.0.1:{port}/server_info")
    assert not answers(f"http://127.0.0.1:{shim_port}/health")
