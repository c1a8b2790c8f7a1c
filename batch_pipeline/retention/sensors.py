"""One sensor ages out what the service wrote: datasets and their partitions, quarantined chunks,
rejected inbox files and finished runs, each sweep on its own (one that fails is logged, the others run).
It launches no run; what it removed is the tick's message in the UI."""

import time

from dagster import DefaultSensorStatus, SensorDefinition, SensorEvaluationContext, SkipReason, sensor

from batch_pipeline.api.store import shared_store
from batch_pipeline.api.store_engine import store_url
from batch_pipeline.core.names import RETENTION_SENSOR
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.core.retention import empty_trash
from batch_pipeline.core.settings import Settings
from batch_pipeline.generation.quarantine_retention import purge_quarantine
from batch_pipeline.intake.rejected_retention import purge_rejected
from batch_pipeline.retention.datasets import DatasetSweep
from batch_pipeline.retention.runs import purge_runs


def build_retention_sensor(settings: Settings) -> SensorDefinition:
    @sensor(name=RETENTION_SENSOR, minimum_interval_seconds=settings.retention_interval,
            default_status=DefaultSensorStatus.RUNNING)
    def _retention_sensor(context: SensorEvaluationContext, pipeline: PipelineConfig):
        layout, instance, log, now = pipeline.layout, context.instance, context.log, time.time()
        has_store = settings.postgres_url is not None or layout.shim_database.exists()
        sweeps = {
            "interrupted deletions": lambda: empty_trash(layout, log),
            "datasets": lambda: DatasetSweep(
                instance, layout, shared_store(store_url(layout, settings.postgres_url)) if has_store else None,
                settings.inbox_dataset_days, now, log).run(),
            "quarantined chunks": lambda: purge_quarantine(layout, settings.quarantine_days, now, log),
            "rejected files": lambda: purge_rejected(layout, settings.rejected_days, now, log),
            "runs": lambda: purge_runs(instance, settings.run_retention_days, now, log),
        }
        removed = []
        for what, sweep in sweeps.items():
            try:
                if count := len(sweep()):
                    removed.append(f"{count} {what}")
            except Exception as exc:
                log.error(f"retention: the sweep of {what} failed: {type(exc).__name__}: {exc}")
        return SkipReason(f"removed {', '.join(removed)}" if removed else "nothing is old enough to remove")

    return _retention_sensor
