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

from batch_pipeline.inbox import accepted_datasets, sweep_inbox
from batch_pipeline.partitions import DATASETS
from batch_pipeline.resources import PipelineConfig


def build_inbox_sensor(ingest_job: JobDefinition, interval_seconds: int) -> SensorDefinition:
    """Registers each accepted file as a dataset partition and requests its ingest run, together.

    Files are moved before the result is committed; a crash in between is healed on the next tick,
    which registers every dataset folder that has no partition yet. The run key is the dataset key,
    so no file ever starts two runs.
    """

    @sensor(name="inbox_sensor", job=ingest_job, minimum_interval_seconds=interval_seconds,
            default_status=DefaultSensorStatus.RUNNING)
    def _inbox_sensor(context: SensorEvaluationContext, pipeline: PipelineConfig):
        layout = pipeline.layout
        for outcome in sweep_inbox(layout, pipeline.max_bytes, pipeline.inbox_settle_seconds):
            if outcome.rejected_because:
                context.log.warning(f"rejected {outcome.file_name}: {outcome.rejected_because}")
            else:
                context.log.info(f"accepted {outcome.file_name} as dataset {outcome.dataset}")
        registered = set(context.instance.get_dynamic_partitions(DATASETS.name))
        new = [key for key in accepted_datasets(layout) if key not in registered]
        if not new:
            return SkipReason("no new batch files")
        return SensorResult(
            run_requests=[RunRequest(run_key=key, partition_key=key) for key in new],
            dynamic_partitions_requests=[DATASETS.build_add_request(new)],
        )

    return _inbox_sensor
