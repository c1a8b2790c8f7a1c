import time

from dagster import (
    DefaultSensorStatus,
    JobDefinition,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from batch_pipeline.api.store import shared_store
from batch_pipeline.api.store_engine import store_url
from batch_pipeline.core.names import BATCH_ID_TAG, DEADLINE_TAG, SHIM_SENSOR
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.generation.launch import GpuLaunches
from batch_pipeline.intake.validation import read_validation


def build_shim_sensor(responses_job: JobDefinition, interval_seconds: int,
                      postgres_url: str | None = None) -> SensorDefinition:
    """Queues the GPU run of each API batch whose input has been validated.

    The batch id is the run key, so each batch launches at most one run, across daemon restarts.
    A batch whose dataset and model already have finished results (a deterministic resubmission)
    or a run on the way needs none (`GpuLaunches`): the shim hands it those results. The input's
    dataset partition and validation run come from the inbox sensor, which registers every dataset folder.
    `postgres_url`: the API's store is in that PostgreSQL, not in the data folder.
    """

    @sensor(name=SHIM_SENSOR, job=responses_job, minimum_interval_seconds=interval_seconds,
            default_status=DefaultSensorStatus.RUNNING)
    def _shim_sensor(context: SensorEvaluationContext, pipeline: PipelineConfig):
        layout = pipeline.layout
        if postgres_url is None and not layout.shim_database.exists():
            return SkipReason("the shim has no batches")
        launches, models = GpuLaunches(context.instance, layout), set()
        now = time.time()
        for batch, dataset in shared_store(store_url(layout, postgres_url)).active_batches():
            if batch.cancelling_at is not None or (batch.expires_at is not None and now >= batch.expires_at):
                continue
            try:  # one batch whose files cannot be read must not hold up the others
                validation = read_validation(layout, dataset)
                if validation is None or not validation.ok:
                    continue
                if launches.wanted(dataset, validation.model, validation.requests):
                    tags = {BATCH_ID_TAG: batch.id, **({DEADLINE_TAG: str(batch.expires_at)} if batch.expires_at else {})}
                    launches.add(dataset, validation.model, run_key=batch.id, tags=tags)
                    models.add(validation.model)
            except Exception as exc:  # the shim shows it in the batch's errors and expires the batch in time
                context.log.error(f"batch {batch.id} (dataset {dataset}) skipped: {type(exc).__name__}: {exc}")
        if not launches:
            return SkipReason("no API batch waiting for a GPU run")
        return launches.result(models)

    return _shim_sensor
