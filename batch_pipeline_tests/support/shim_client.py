"""The shim's HTTP API in process (FastAPI's test client), and what the daemon's runs would have done for it."""

import json
import uuid

from dagster import DagsterRun, DagsterRunStatus, materialize
from fastapi.testclient import TestClient

from batch_pipeline.api.app import create_app
from batch_pipeline.core.names import BATCH_ID_TAG
from batch_pipeline.core.partitions import DATASET_MODELS, DATASETS, dataset_model_key
from batch_pipeline.core.settings import Settings
from batch_pipeline.generation.chunks import ChunkStore, ResultRow
from batch_pipeline.generation.results import write_output_files
from batch_pipeline.intake.assets import batch_requests
from batch_pipeline_tests.support.models import MODEL

KEY = "secret-key"


def shim_client(pipeline, instance, **settings) -> TestClient:
    app = create_app(Settings(data_dir=pipeline.data_dir, **settings), instance, refresh_interval_seconds=3600)
    return TestClient(base_url="http://localhost", app=app)


def jsonl_bytes(lines) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def upload_file(client, lines, name="batch.jsonl", purpose="batch"):
    return client.post("/v1/files", files={"file": (name, jsonl_bytes(lines), "application/jsonl")},
                       data={"purpose": purpose})


def create_batch(client, file_id, **fields):
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **fields}
    return client.post("/v1/batches", json=body)


def validate_batch(pipeline, instance, client, batch_id):
    """What the inbox sensor + ingest run do for a new API batch."""
    dataset = client.app.state.service.store.batch(batch_id)[1]
    instance.add_dynamic_partitions(DATASETS.name, [dataset])
    materialize([batch_requests], partition_key=dataset, instance=instance, resources={"pipeline": pipeline},
                raise_on_error=False)
    return dataset


def answer_rows(custom_ids: dict[int, str]) -> list[ResultRow]:
    """Successful chunk rows for these row indexes and custom ids."""
    body = {"id": "c", "object": "chat.completion", "created": 0, "model": MODEL, "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
    return [ResultRow(row_index=i, custom_id=custom_id, line_id=f"batch_req_{i}", request_id=f"req_{i}",
                      status_code=200, body_json=json.dumps(body), prompt_tokens=5, completion_tokens=2)
            for i, custom_id in custom_ids.items()]


def finish_batch(pipeline, instance, dataset: str, custom_ids: list[str]) -> None:
    """What a successful GPU run of the dataset leaves: its chunks, output files and run record."""
    paths = pipeline.layout.responses(dataset, MODEL)
    ChunkStore(paths.chunks).write(0, answer_rows(dict(enumerate(custom_ids))))
    write_output_files(ChunkStore(paths.chunks), paths.output, paths.errors)
    instance.add_run(DagsterRun(job_name="generate_responses", status=DagsterRunStatus.SUCCESS,
                                tags={"dagster/partition": f"{dataset}|{MODEL}"}))


def started_run(instance, dataset: str, batch_id: str) -> DagsterRun:
    """The GPU run the shim sensor launched for `batch_id`, now holding the GPU."""
    tags = {**DATASET_MODELS.get_tags_for_partition_key(dataset_model_key(dataset, MODEL)), BATCH_ID_TAG: batch_id}
    return instance.add_run(DagsterRun(job_name="generate_responses", run_id=str(uuid.uuid4()),
                                       status=DagsterRunStatus.STARTED, tags=tags))
