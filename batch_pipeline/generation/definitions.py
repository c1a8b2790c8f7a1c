from dagster import Definitions

from batch_pipeline.core.settings import Settings
from batch_pipeline.generation.assets import batch_responses, responses_job
from batch_pipeline.generation.sensors import build_responses_sensor


def generation_definitions(settings: Settings) -> Definitions:
    return Definitions(assets=[batch_responses], jobs=[responses_job],
                       sensors=[build_responses_sensor(responses_job, settings.sensor_interval)])
