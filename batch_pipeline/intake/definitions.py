from dagster import Definitions

from batch_pipeline.core.settings import Settings
from batch_pipeline.intake.assets import batch_requests, ingest_job
from batch_pipeline.intake.outbox_sensor import build_outbox_sensor
from batch_pipeline.intake.sensors import build_inbox_sensor


def intake_definitions(settings: Settings) -> Definitions:
    return Definitions(assets=[batch_requests], jobs=[ingest_job],
                       sensors=[build_inbox_sensor(ingest_job, settings.sensor_interval),
                                build_outbox_sensor(settings.sensor_interval)])
