"""The queue policy's Dagster glue against a real instance: GPU runs however launched, placement
tags written on queued runs, the user's own priority kept, and the shim's queue view."""

from dagster import AssetKey, DagsterRunStatus, build_sensor_context, instance_for_test
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test

from batch_pipeline.queue.policy import QueuePolicy
from batch_pipeline.queue.runs import MODEL_TAG, PRIORITY_TAG, REASON_TAG, USER_PRIORITY_TAG, gpu_queue
from batch_pipeline.queue.sensors import build_queue_sensor

SENSOR = build_queue_sensor(5, QueuePolicy(max_wait_seconds=3600, max_passed_over=5))


def _origin(job: str) -> RemoteJobOrigin:
    """Queued runs must say where their code lives; the sensor never loads it."""
    return RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("batch_pipeline"), "__repository__"), job)


def _gpu_run(instance, model: str, status=DagsterRunStatus.QUEUED, job="generate_responses", **tags):
    return create_run_for_test(instance, job_name=job, status=status, remote_job_origin=_origin(job),
                               tags={"dagster/partition": f"ds-{model.lower()}|{model}", **tags},
                               asset_selection=frozenset({AssetKey("batch_responses")}))


def _priorities(instance, runs) -> list[int]:
    return [int(instance.get_run_by_id(run.run_id).tags[PRIORITY_TAG]) for run in runs]


def test_queued_runs_for_the_running_model_go_first_and_show_model_and_reason():
    with instance_for_test() as instance:
        _gpu_run(instance, "B", status=DagsterRunStatus.STARTED)
        a1, b1 = _gpu_run(instance, "A"), _gpu_run(instance, "B")
        a2 = _gpu_run(instance, "A", job="__ASSET_JOB")  # a UI click or a backfill
        create_run_for_test(instance, job_name="ingest_batch", status=DagsterRunStatus.QUEUED,
                            remote_job_origin=_origin("ingest_batch"), tags={"dagster/partition": "ds-a"})

        SENSOR(build_sensor_context(instance=instance))

        assert _priorities(instance, [b1, a1, a2]) == [3, 2, 1]
        tags = instance.get_run_by_id(b1.run_id).tags
        assert tags[MODEL_TAG] == "B" and tags[REASON_TAG].startswith("same model")
        assert len(gpu_queue(instance).queued) == 3


def test_an_explicit_user_priority_is_kept_and_outranks_grouping():
    with instance_for_test() as instance:
        _gpu_run(instance, "B", status=DagsterRunStatus.STARTED)
        urgent = _gpu_run(instance, "A", **{PRIORITY_TAG: "7"})
        same = _gpu_run(instance, "B")
        for _ in range(2):  # the second pass finds nothing to change and keeps the user's 7
            SENSOR(build_sensor_context(instance=instance))
        assert _priorities(instance, [urgent, same]) == [2, 1]
        tags = instance.get_run_by_id(urgent.run_id).tags
        assert tags[USER_PRIORITY_TAG] == "7" and tags[REASON_TAG] == "user priority 7"
