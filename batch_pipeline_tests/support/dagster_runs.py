"""GPU runs on a test's Dagster instance: made as the UI or the queue makes them, and read back."""

import uuid

from dagster import AssetKey, DagsterRunStatus
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test


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


def ui_launched_run(instance, dataset: str, model: str):
    """A GPU run as the UI's Materialize button or a backfill makes it (the asset job, not ours),
    once it holds the GPU."""
    from dagster import DagsterRun

    from batch_pipeline.core.names import RESPONSES_ASSET
    from batch_pipeline.core.partitions import DATASET_MODELS, dataset_model_key

    run = DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                     asset_selection=frozenset({RESPONSES_ASSET}),
                     tags=DATASET_MODELS.get_tags_for_partition_key(dataset_model_key(dataset, model)))
    return instance.add_run(run)


def job_origin(job: str) -> RemoteJobOrigin:
    """Queued runs must say where their code lives; the sensor never loads it."""
    return RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("batch_pipeline"), "__repository__"), job)


def queued_gpu_run(instance, model: str, status=DagsterRunStatus.QUEUED, job="generate_responses", **tags):
    """A GPU run of the model's cell in the queue (or `status`), by our job or, with `__ASSET_JOB`, the UI."""
    return create_run_for_test(instance, job_name=job, status=status, remote_job_origin=job_origin(job),
                               tags={"dagster/partition": f"ds-{model.lower()}|{model}", **tags},
                               asset_selection=frozenset({AssetKey("batch_responses")}))
