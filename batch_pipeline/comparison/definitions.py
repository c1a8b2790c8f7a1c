from dagster import Definitions

from batch_pipeline.comparison.assets import model_comparison
from batch_pipeline.comparison.sensors import build_comparison_automation_sensor


def comparison_definitions() -> Definitions:
    return Definitions(assets=[model_comparison],
                       sensors=[build_comparison_automation_sensor()])
