"""A batch through `make run`'s launcher and the real vLLM CPU engine with the official openai client:
the new batch and file fields, its lines so far (`partial_output`), and the signed `batch.completed`
webhook to a receiver on loopback."""

import json
import os
import subprocess
import sys

import httpx
import pytest
from openai import OpenAI

from batch_pipeline.api.partial import LINES_HEADER
from batch_pipeline.api.store import ShimStore
from batch_pipeline.core.loopback import answers, free_port
from batch_pipeline.core.settings import POSTGRES_URL_ENV
from batch_pipeline.tools.prepare_instance import prepare_instance
from batch_pipeline_tests.support.batches import request_line
from batch_pipeline_tests.support.models import MODEL, PROJECT_ROOT
from batch_pipeline_tests.support.processes import stop_launcher, wait_for
from batch_pipeline_tests.support.webhook_receiver import SECRET, Receiver

pytestmark = pytest.mark.e2e

HOUR = 3600


@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_openai_client_batch_fields_and_webhook_through_the_daemon(storage, data_root, tmp_path, request,
                                                                  monkeypatch):
    """On PostgreSQL, Dagster's storage and the API's store (read by the daemon's API-batch sensor) are there."""
    postgres_url = request.getfixturevalue("postgres_url") if storage == "postgres" else None
    if postgres_url:
        monkeypatch.setenv(POSTGRES_URL_ENV, postgres_url)  # read by prepare_instance's instance and the services
    home = tmp_path / "dagster_home"
    prepare_instance(home, postgres_url)
    port, shim_port = free_port(), free_port()
    with Receiver() as receiver:
        env = {**os.environ, "DAGSTER_HOME": str(home), "BATCH_PIPELINE_DATA": str(data_root),
               "BATCH_PIPELINE_SENSOR_INTERVAL": "1", "BATCH_PIPELINE_WEBHOOK_URL": receiver.url,
               "BATCH_PIPELINE_WEBHOOK_SECRET": SECRET}
        log = (tmp_path / "launcher.log").open("w")
        launcher = subprocess.Popen(
            [sys.executable, "-m", "batch_pipeline.cli", "serve", "--port", str(port), "--shim-port", str(shim_port),
             "--no-demo"], cwd=PROJECT_ROOT, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: answers(f"http://127.0.0.1:{shim_port}/health"), 120, "the shim", launcher)
            client = OpenAI(base_url=f"http://127.0.0.1:{shim_port}/v1", api_key="not-needed")
            lines = [request_line(f"w-{i}", max_tokens=8) for i in range(4)]
            upload = client.files.create(file=("w.jsonl", "".join(json.dumps(line) + "\n" for line in lines).encode()),
                                         purpose="batch", expires_after={"anchor": "created_at", "seconds": HOUR})
            assert upload.expires_at == upload.created_at + HOUR
            # "1h" is our extension beside OpenAI's "24h": the client sends it as it is.
            batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                          completion_window="1h", metadata={"k" * 64: "v" * 512},
                                          output_expires_after={"anchor": "created_at", "seconds": 2 * HOUR})
            assert batch.expires_at == batch.created_at + HOUR and batch.warnings is None
            forecasts = []

            partial: list[str] = []  # the lines so far, read as docs/api.md shows

            def finished():
                current = client.batches.retrieve(batch.id)
                if current.status == "in_progress" and current.expected_completion_at:
                    forecasts.append(current.expected_completion_at)
                page = client.get(f"/batches/{batch.id}/partial_output", cast_to=httpx.Response,
                                  options={"params": {"after": len(partial)}})
                partial.extend(page.text.splitlines())
                assert int(page.headers[LINES_HEADER]) == len(partial)
                if current.status == "in_progress":
                    assert current.request_counts.completed + current.request_counts.failed <= len(partial)
                return current if current.status in {"completed", "failed", "cancelled", "expired"} else None

            done = wait_for(finished, 600, "the batch to finish", launcher)
            assert done.status == "completed" and done.model == MODEL, done
            assert forecasts and all(done.created_at <= expected for expected in forecasts), forecasts
            assert done.cost["gpu_seconds"] > 0 and done.cost["hosted_cost_usd"]["openai/gpt-4o-mini"] > 0
            assert sorted(json.loads(line)["custom_id"] for line in partial) == [f"w-{i}" for i in range(4)]
            assert sorted(partial) == sorted(client.files.content(done.output_file_id).text.splitlines())
            assert done.usage.input_tokens > 0 and done.usage.input_tokens_details.cached_tokens == 0
            assert done.usage.output_tokens_details.reasoning_tokens == 0
            output = client.files.retrieve(done.output_file_id)
            assert output.expires_at == output.created_at + 2 * HOUR
            wait_for(lambda: receiver.received, 60, "the webhook", launcher)
        finally:
            stop_launcher(launcher, log)
    [event] = receiver.events()
    assert (event.type, event.data.id, event.created_at) == ("batch.completed", batch.id, done.completed_at)
    assert (data_root / "shim" / "shim.sqlite3").exists() == (postgres_url is None)
    if postgres_url:
        assert ShimStore(postgres_url).batch(batch.id)[0].status == "completed"
