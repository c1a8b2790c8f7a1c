"""File retention: files whose `expires_at` has passed lose their bytes and their record.

The shim already answers 404 for such a file the moment it expires; this sensor frees the disk. It
runs in the Dagster daemon, so retention works whether or not the shim is up.
"""

import time

from dagster import DefaultSensorStatus, SensorDefinition, SensorEvaluationContext, SkipReason, sensor

from batch_pipeline.api.store import ShimStore, shared_store
from batch_pipeline.api.store_engine import store_url
from batch_pipeline.core.names import FILE_RETENTION_SENSOR
from batch_pipeline.core.resources import PipelineConfig


def purge_expired_files(store: ShimStore, now: float) -> list[str]:
    """Deletes every expired file, bytes first: a crash in between leaves a record the next pass removes,
    never bytes no record points to. Returns the ids deleted."""
    deleted = []
    for file_id, path in store.expired_files(now):
        path.unlink(missing_ok=True)
        store.delete_file(file_id)
        deleted.append(file_id)
    return deleted


def build_file_retention_sensor(interval_seconds: int, postgres_url: str | None = None) -> SensorDefinition:
    """Launches no run: the deletion is the tick itself, and its outcome is the tick's message in the UI.
    `postgres_url`: the API's store is in that PostgreSQL, not in the data folder."""

    @sensor(name=FILE_RETENTION_SENSOR, minimum_interval_seconds=interval_seconds,
            default_status=DefaultSensorStatus.RUNNING)
    def _file_retention_sensor(context: SensorEvaluationContext, pipeline: PipelineConfig):
        layout = pipeline.layout
        if postgres_url is None and not layout.shim_database.exists():
            return SkipReason("the shim has no files")
        deleted = purge_expired_files(shared_store(store_url(layout, postgres_url)), time.time())
        if not deleted:
            return SkipReason("no file has expired")
        context.log.info("deleted %d expired file(s): %s", len(deleted), ", ".join(deleted))
        return SkipReason(f"deleted {len(deleted)} expired file(s)")

    return _file_retention_sensor
