from dagster import (
    DagsterInstance,
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.names import INBOX_SENSOR, RUN_KEY_TAG
from batch_pipeline.core.partitions import DATASETS
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.intake.inbox import accepted_datasets, sweep_inbox


def _awaiting_ingest(instance: DagsterInstance, layout: DataLayout, key: str, registered: set[str]) -> bool:
    if key not in registered:
        return True
    # The daemon adds partitions before it records runs: a crash in between leaves a registered
    # dataset with no run, which only its missing validation report and run record reveal.
    return not layout.dataset(key).validation.exists() and not instance.get_run_ids(
        RunsFilter(tags={RUN_KEY_TAG: key}), limit=1)


def build_inbox_sensor(ingest_job: JobDefinition, interval_seconds: int) -> SensorDefinition:
    """Registers each accepted file as a dataset partition and requests its ingest run, together.

    Files are moved before the result is committed; a crash in between is healed on a later tick,
    which requests every accepted dataset that has neither a partition nor an ingest run. The run
    key is the dataset key, so no file ever starts two runs.
    """

    @sensor(name=INBOX_SENSOR, job=ingest_job, minimum_interval_seconds=interval_seconds,
            default_status=DefaultSensorStatus.RUNNING)
    def _inbox_sensor(context: SensorEvaluationContext, pipeline: PipelineConfig):
        layout = pipeline.layout
        for outcome in sweep_inbox(layout, pipeline.max_bytes, pipeline.inbox_settle_seconds):
            if outcome.rejected_because:
                context.log.warning(f"rejected {outcome.file_name}: {outcome.rejected_because}")
            else:
                context.log.info(f"accepted {outcome.file_name} as dataset {outcome.dataset}")
        registered = set(context.instance.get_dynamic_partitions(DATASETS.name))
        pending = [key for key in accepted_datasets(layout)
                   if _awaiting_ingest(context.instance, layout, key, registered)]
        if not pending:
            return SkipReason("no new batch files")
        new = [key for key in pending if key not in registered]
        return SensorResult(
            run_requests=[RunRequest(run_key=key, partition_key=key) for key in pending],
            dynamic_partitions_requests=[DATASETS.build_add_request(new)] if new else [],
        )

    return _inbox_sensor
