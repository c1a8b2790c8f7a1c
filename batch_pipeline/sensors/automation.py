from dagster import AssetSelection, AutomationConditionSensorDefinition, DefaultSensorStatus

from batch_pipeline.assets.comparison import model_comparison
from batch_pipeline.assets.curation import curation_export


def build_comparison_automation_sensor(interval_seconds: int) -> AutomationConditionSensorDefinition:
    """Keeps each dataset's comparison and review export in step with its finished models.

    Running from the start, unlike Dagster's default automation sensor, so comparisons appear
    without a visit to the UI. Plain runs, not backfills: each comparison is a quick CPU run.
    """
    return AutomationConditionSensorDefinition(
        "comparison_automation_sensor", target=AssetSelection.assets(model_comparison, curation_export),
        default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=interval_seconds,
        emit_backfills=False)
