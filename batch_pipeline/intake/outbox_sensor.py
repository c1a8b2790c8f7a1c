"""`outbox_sensor`: keeps data/outbox/ up to date with every inbox batch's outcome (intake.outbox)."""

from dagster import DefaultSensorStatus, SensorDefinition, SensorEvaluationContext, SkipReason, sensor

from batch_pipeline.core.names import OUTBOX_SENSOR
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.intake.outbox import sync_outbox


def build_outbox_sensor(interval_seconds: int) -> SensorDefinition:
    @sensor(name=OUTBOX_SENSOR, minimum_interval_seconds=interval_seconds,
            default_status=DefaultSensorStatus.RUNNING)
    def _outbox_sensor(context: SensorEvaluationContext, pipeline: PipelineConfig):
        written = sync_outbox(pipeline.layout)
        for path in written:
            context.log.info(f"wrote {path}")
        return SkipReason(f"wrote {len(written)} outbox file(s)" if written else "outbox up to date")

    return _outbox_sensor
