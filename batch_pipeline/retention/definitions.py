from dagster import Definitions

from batch_pipeline.core.settings import Settings
from batch_pipeline.retention.sensors import build_retention_sensor


def retention_definitions(settings: Settings) -> Definitions:
    return Definitions(sensors=[build_retention_sensor(settings)])
