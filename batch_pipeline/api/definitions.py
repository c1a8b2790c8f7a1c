from dagster import Definitions

from batch_pipeline.api.retention import build_file_retention_sensor
from batch_pipeline.api.sensors import build_shim_sensor
from batch_pipeline.core.settings import Settings
from batch_pipeline.generation.assets import responses_job


def api_definitions(settings: Settings) -> Definitions:
    return Definitions(sensors=[build_shim_sensor(responses_job, settings.sensor_interval, settings.postgres_url),
                                build_file_retention_sensor(settings.file_retention_interval, settings.postgres_url)])
