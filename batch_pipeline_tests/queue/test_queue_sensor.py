"""The queue policy's Dagster glue against a real instance: GPU runs however launched, placement
tags written on queued runs, the user's own priority kept, and the shim's queue view."""

from dagster import DagsterRun, DagsterRunStatus, build_sensor_context, instance_for_test
from dagster._core.test_utils import create_run_for_test
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from fastapi.testclient import TestClient

from batch_pipeline.api.app import create_app
from batch_pipeline.core.settings import Settings
from batch_pipeline.queue.policy import QueuePolicy
from batch_pipeline.queue.runs import MODEL_TAG, PRIORITY_TAG, REASON_TAG, USER_PRIORITY_TAG, gpu_queue, tag_priority
from batch_pipeline.queue.sensors import build_queue_sensor
from batch_pipeline_tests.support.dagster_runs import job_origin, queued_gpu_run

SENSOR = build_queue_sensor(5, QueuePolicy(max_wait_seconds=3600, max_passed_over=5))


def _priorities(instance, runs) -> list[int]:
    return [int(instance.get_run_by_id(run.run_id).tags[PRIORITY_TAG]) for run in runs]


def test_queued_runs_for_the_running_model_go_first_and_show_model_and_reason(pipeline):
    with instance_for_test() as instance:
        queued_gpu_run(instance, "B", status=DagsterRunStatus.STARTED)
        a1, b1 = queued_gpu_run(instance, "A"), queued_gpu_run(instance, "B")
        a2 = queued_gpu_run(instance, "A", job="__ASSET_JOB")  # a UI click or a backfill
        create_run_for_test(instance, job_name="ingest_batch", status=DagsterRunStatus.QUEUED,
                            remote_job_origin=job_origin("ingest_batch"), tags={"dagster/partition": "ds-a"})

        SENSOR(build_sensor_context(instance=instance, resources={"pipeline": pipeline}))

        assert _priorities(instance, [b1, a1, a2]) == [3, 2, 1]
        tags = instance.get_run_by_id(b1.run_id).tags
        assert tags[MODEL_TAG] == "B" and tags[REASON_TAG].startswith("same model")
        assert len(gpu_queue(instance).queued) == 3


def test_an_explicit_user_priority_is_kept_and_outranks_grouping(pipeline):
    with instance_for_test() as instance:
        queued_gpu_run(instance, "B", status=DagsterRunStatus.STARTED)
        urgent = queued_gpu_run(instance, "A", **{PRIORITY_TAG: "7"})
        same = queued_gpu_run(instance, "B")
        for _ in range(2):  # the second pass finds nothing to change and keeps the user's 7
            SENSOR(build_sensor_context(instance=instance, resources={"pipeline": pipeline}))
        assert _priorities(instance, [urgent, same]) == [2, 1]
        tags = instance.get_run_by_id(urgent.run_id).tags
        assert tags[USER_PRIORITY_TAG] == "7" and tags[REASON_TAG] == "user priority 7"


def test_priority_tags_are_read_as_dagsters_own_daemon_reads_them():
    typed = ["high", "7", None, "-3", " 4 ", "2.5", "", "0"]
    runs = [DagsterRun(job_name="generate_responses", run_id=f"run-{i}",
                       tags={} if value is None else {PRIORITY_TAG: value}) for i, value in enumerate(typed)]
    daemon_order = QueuedRunCoordinatorDaemon(interval_seconds=1)._priority_sort(runs)
    ours = sorted(runs, key=lambda run: -tag_priority(run.tags.get(PRIORITY_TAG)))
    assert [run.run_id for run in ours] == [run.run_id for run in daemon_order]
    assert tag_priority("high") == 0


def test_a_priority_typed_as_text_ranks_as_zero_and_is_kept_as_typed(pipeline):
    with instance_for_test() as instance:
        queued_gpu_run(instance, "B", status=DagsterRunStatus.STARTED)
        typed = queued_gpu_run(instance, "A", **{PRIORITY_TAG: "high"})
        same = queued_gpu_run(instance, "B")
        for _ in range(2):  # the second pass reads the policy's own tags back
            SENSOR(build_sensor_context(instance=instance, resources={"pipeline": pipeline}))
        assert _priorities(instance, [same, typed]) == [2, 1]  # "high" is 0: model grouping decides
        tags = instance.get_run_by_id(typed.run_id).tags
        assert tags[USER_PRIORITY_TAG] == "high" and tags[REASON_TAG] == "first come, first served"


def test_the_shim_shows_a_run_whose_priority_was_typed_as_text(pipeline):
    with instance_for_test() as instance:
        typed = queued_gpu_run(instance, "A", **{PRIORITY_TAG: "high"})
        urgent = queued_gpu_run(instance, "B", **{PRIORITY_TAG: "3"})
        app = create_app(Settings(data_dir=pipeline.data_dir), instance, refresh_interval_seconds=3600)
        with TestClient(base_url="http://localhost", app=app) as client:
            queue = client.get("/v1/queue")
            metrics = client.get("/metrics")
    assert [(entry["run_id"], entry["priority"]) for entry in queue.json()["data"]] == \
        [(urgent.run_id, 3), (typed.run_id, 0)]
    assert metrics.status_code == 200 and "batch_pipeline_queue_depth 2.0" in metrics.text
