import time

from dagster import (
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from batch_pipeline.partitions import MODELS, dataset_model_key
from batch_pipeline.resources import PipelineConfig
from batch_pipeline.shim.lifecycle import ACTIVE_RUN_STATUSES
from batch_pipeline.shim.service import (
    BATCH_ID_TAG,
    RESPONSES_JOB,
    latest_run,
    partition_tags,
    read_validation,
    run_status,
)
from batch_pipeline.shim.store import ShimStore


def build_shim_sensor(responses_job: JobDefinition, interval_seconds: int) -> SensorDefinition:
    """Queues the GPU run of each API batch whose input has been validated.

    The batch id is the run key, so each batch launches at most one run, across daemon restarts.
    A batch whose dataset and model already have finished results (a deterministic resubmission)
    or a run on the way needs none: the shim hands it those results. The input's dataset partition
    and validation run come from the inbox sensor, which registers every dataset folder.
    """

    @sensor(name="shim_sensor", job=responses_job, minimum_interval_seconds=interval_seconds,
            default_status=DefaultSensorStatus.RUNNING)
    def _shim_sensor(context: SensorEvaluationContext, pipeline: PipelineConfig):
        layout = pipeline.layout
        database = layout.shim / "shim.sqlite3"
        if not database.exists():
            return SkipReason("the shim has no batches")
        requests, models, launched = [], set(), set()
        now = time.time()
        for batch, dataset in ShimStore(database).active_batches():
            validation = read_validation(layout, dataset)
            if batch.cancelling_at is not None or (batch.expires_at is not None and now >= batch.expires_at) \
                    or validation is None or not validation.ok:
                continue
            partition = dataset_model_key(dataset, validation.model)
            latest = latest_run(context.instance, RESPONSES_JOB, partition_tags(dataset, validation.model))
            status = run_status(latest)
            finished = status == "SUCCESS" and layout.responses(dataset, validation.model).output.exists()
            if finished or status in ACTIVE_RUN_STATUSES or partition in launched:
                continue  # identical batches share one run: at most one per partition at a time
            launched.add(partition)
            models.add(validation.model)
            requests.append(RunRequest(run_key=batch.id, partition_key=partition, tags={BATCH_ID_TAG: batch.id}))
        if not requests:
            return SkipReason("no API batch waiting for a GPU run")
        missing = sorted(m for m in models if not context.instance.has_dynamic_partition(MODELS.name, m))
        return SensorResult(run_requests=requests,
                            dynamic_partitions_requests=[MODELS.build_add_request(missing)] if missing else [])

    return _shim_sensor
