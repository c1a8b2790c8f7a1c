"""Making things old without waiting: files and folders by their modification time, runs by their record."""

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

DAY = 86400


def age(path: Path, days: float) -> Path:
    """Sets the path's modification (and access) time `days` into the past."""
    stamp = time.time() - days * DAY
    os.utime(path, (stamp, stamp))
    return path


def age_tree(folder: Path, days: float) -> Path:
    for path in [*folder.rglob("*"), folder]:
        age(path, days)
    return folder


def age_run(instance, run_id: str, days: float) -> None:
    """The run's record says it was last updated `days` ago (a finished run's end)."""
    from dagster._core.storage.runs.schema import RunsTable

    when = (datetime.now(UTC) - timedelta(days=days)).replace(tzinfo=None)
    with instance.run_storage.connect() as conn:
        conn.execute(RunsTable.update().where(RunsTable.c.run_id == run_id)
                     .values(update_timestamp=when, create_timestamp=when))
