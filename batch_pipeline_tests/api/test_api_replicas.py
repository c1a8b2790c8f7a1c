"""Two API replicas (`python -m batch_pipeline.api`) on different ports, one PostgreSQL for the store
and for Dagster, the official openai client spread over both, and one replica SIGKILLed while its
batches' runs are being stopped. No daemon and no engine: the test ticks the shim sensor itself and
plays the GPU run worker (runs that stop when asked), so every launch and every event is counted."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import openai
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, SensorResult, build_sensor_context, materialize
from openai import OpenAI

from batch_pipeline.api.sensors import build_shim_sensor
from batch_pipeline.api.store import ShimStore
from batch_pipeline.core.loopback import answers, free_port
from batch_pipeline.core.names import BATCH_ID_TAG, RESPONSES_JOB
from batch_pipeline.core.partitions import DATASET_MODELS, DATASETS
from batch_pipeline.core.settings import POSTGRES_URL_ENV
from batch_pipeline.core.stop_request import stop_requested
from batch_pipeline.generation.assets import responses_job
from batch_pipeline.intake.assets import batch_requests
from batch_pipeline.tools.prepare_instance import prepare_instance
from batch_pipeline_tests.support.batches import request_line
from batch_pipeline_tests.support.dagster_runs import gpu_runs_by_creation
from batch_pipeline_tests.support.models import MODEL, PROJECT_ROOT
from batch_pipeline_tests.support.processes import wait_for
from batch_pipeline_tests.support.webhook_receiver import SECRET, Receiver

BATCHES = 12


def _start(port: int, env: dict, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "batch_pipeline.api"], cwd=PROJECT_ROOT,
                            env={**env, "BATCH_PIPELINE_SHIM_PORT": str(port)}, stdout=log, stderr=subprocess.STDOUT)


def _lines(index: int) -> bytes:
    """Different questions per batch, so each batch is its own dataset and needs its own run."""
    lines = [request_line(f"b{index}-r{row}") for row in range(2)]
    for row, line in enumerate(lines):
        line["body"]["messages"][-1]["content"] += f" (batch {index}, row {row})"
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def test_two_replicas_share_one_postgres_and_survive_losing_one(postgres_url, data_root, pipeline, tmp_path,
                                                               monkeypatch):
    monkeypatch.setenv(POSTGRES_URL_ENV, postgres_url)
    home = tmp_path / "dagster_home"
    prepare_instance(home, postgres_url)
    ports = [free_port(), free_port()]
    log = (tmp_path / "replicas.log").open("w")
    with Receiver() as receiver, DagsterInstance.from_config(str(home)) as instance:
        env = {**os.environ, "DAGSTER_HOME": str(home), "BATCH_PIPELINE_DATA": str(data_root),
               POSTGRES_URL_ENV: postgres_url, "BATCH_PIPELINE_WEBHOOK_URL": receiver.url,
               "BATCH_PIPELINE_WEBHOOK_SECRET": SECRET, "BATCH_PIPELINE_WEBHOOK_TIMEOUT_SECONDS": "2"}
        replicas = [_start(port, env, log) for port in ports]
        try:
            for port, replica in zip(ports, replicas):
                wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), 120, "a replica", replica)
            clients = [OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
                       for port in ports]
            survivor, doomed = replicas[1], replicas[0]

            def submit(index: int) -> str:
                """Uploaded through one replica, created through the other, read and listed through both."""
                near, far = clients[index % 2], clients[1 - index % 2]
                upload = near.files.create(file=(f"b{index}.jsonl", _lines(index)), purpose="batch")
                batch = far.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                           completion_window="24h")
                assert near.batches.retrieve(batch.id).input_file_id == upload.id
                for client in clients:
                    assert batch.id in {listed.id for listed in client.batches.list(limit=100)}
                return batch.id

            def cancel_through_both(batch_id: str) -> list[str]:
                """The same cancel sent to both replicas at once: one wins, the other sees it done (409)."""
                def cancel(client):
                    try:
                        return client.batches.cancel(batch_id).status
                    except openai.ConflictError:
                        return "conflict"
                with ThreadPoolExecutor(2) as both:
                    return list(both.map(cancel, clients))

            with ThreadPoolExecutor(6) as pool:
                ids = list(pool.map(submit, range(BATCHES)))
                early, launched = ids[::2], ids[1::2]
                outcomes = list(pool.map(cancel_through_both, early))  # before their input is validated
            for outcome in outcomes:
                assert "cancelled" in outcome and set(outcome) <= {"cancelled", "conflict"}, outcome

            # What the inbox sensor's ingest and the daemon's shim sensor do, here by hand, on the shared instance.
            store = ShimStore(postgres_url)
            datasets = {batch_id: store.batch(batch_id)[1] for batch_id in launched}
            for dataset in datasets.values():
                instance.add_dynamic_partitions(DATASETS.name, [dataset])
                assert materialize([batch_requests], partition_key=dataset, instance=instance,
                                   resources={"pipeline": pipeline}).success
            sensor = build_shim_sensor(responses_job, 1, postgres_url)
            tick = sensor(build_sensor_context(instance=instance, resources={"pipeline": pipeline}))
            assert isinstance(tick, SensorResult)
            assert sorted(request.run_key for request in tick.run_requests) == sorted(launched)
            runs = {}
            for request in tick.run_requests:  # launched, now generating
                tags = {**DATASET_MODELS.get_tags_for_partition_key(request.partition_key), **request.tags}
                runs[request.run_key] = instance.add_run(DagsterRun(job_name=RESPONSES_JOB,
                                                                    status=DagsterRunStatus.STARTED, tags=tags))
            again = sensor(build_sensor_context(instance=instance, resources={"pipeline": pipeline}))
            assert not isinstance(again, SensorResult) or not again.run_requests  # no batch launched twice
            for batch_id in launched:
                for client in clients:
                    assert client.batches.retrieve(batch_id).status == "in_progress"

            with ThreadPoolExecutor(6) as pool:
                statuses = list(pool.map(lambda pair: clients[pair[0] % 2].batches.cancel(pair[1]).status,
                                         enumerate(launched)))
            assert set(statuses) == {"cancelling"}  # their runs are asked to stop at the next chunk
            doomed.kill()  # mid-run: its refresher and webhook sender may hold batches and events
            doomed.wait()
            for batch_id, run in runs.items():  # each run worker stops as asked, whichever replica asked
                stop = pipeline.layout.responses(datasets[batch_id], MODEL).stop_request
                assert stop_requested(stop, run.run_id)
                instance.report_run_canceled(run)

            def all_cancelled():
                return all(clients[1].batches.retrieve(batch_id).status == "cancelled" for batch_id in ids)

            wait_for(all_cancelled, 120, "every batch to be cancelled by the surviving replica", survivor)

            def all_delivered():
                events = [row for batch_id in ids for row in store.webhook_events(batch_id)]
                return len(events) == BATCHES and all(row["delivered_at"] for row in events)

            # A claim the killed replica held passes to the survivor once its lease ends.
            wait_for(all_delivered, 120, "every event to be delivered", survivor)
            assert survivor.poll() is None
        finally:
            for replica in replicas:
                replica.kill()
                replica.wait()
            log.close()

        launches = [record.dagster_run.tags.get(BATCH_ID_TAG) for record in gpu_runs_by_creation(instance)]
        assert sorted(launches) == sorted(launched)  # one run per launched batch, none for the others

    events = receiver.events()  # each verified against the secret by the openai client
    assert sorted(event.data.id for event in events if event.type == "batch.cancelled") == sorted(ids)
    by_batch = {}
    for headers, body in receiver.received:
        by_batch.setdefault(json.loads(body)["data"]["id"], set()).add(headers["webhook-id"])
    assert all(len(event_ids) == 1 for event_ids in by_batch.values()), by_batch  # one event per batch
