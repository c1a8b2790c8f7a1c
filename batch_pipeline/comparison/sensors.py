from dagster import AssetSelection, AutomationConditionSensorDefinition, DefaultSensorStatus

from batch_pipeline.core.names import COMPARISON_ASSET, COMPARISON_SENSOR, CURATION_EXPORT_ASSET

# Comparisons wait for whole batches; each evaluation takes CPU from a batch that is generating.
_INTERVAL_SECONDS = 30


def build_comparison_automation_sensor() -> AutomationConditionSensorDefinition:
    """Keeps each dataset's comparison and review export in step with its finished models.

    Running from the start, unlike Dagster's default automation sensor, so comparisons appear
    without a visit to the UI. Plain runs, not backfills: each comparison is a quick CPU run.
    """
    return AutomationConditionSensorDefinition(
        COMPARISON_SENSOR, target=AssetSelection.assets(COMPARISON_ASSET, CURATION_EXPORT_ASSET),
        default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=_INTERVAL_SECONDS,
        emit_backfills=False)
