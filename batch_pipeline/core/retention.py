"""What every retention sweep shares: the age past which an item goes, and removing items one at a time
so that one that cannot be removed never stops the others."""

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from batch_pipeline.core.layout import DataLayout

DAY_SECONDS = 86400
Item = TypeVar("Item")


def cutoff(days: float, now: float) -> float | None:
    """The time before which an item is old enough to go; None when `days` is 0: kept for good."""
    return now - days * DAY_SECONDS if days > 0 else None


def modified_before(path: Path, before: float) -> bool:
    """False for a path that is gone meanwhile: there is nothing left to remove."""
    try:
        return path.stat().st_mtime < before
    except FileNotFoundError:
        return False


def remove_each(items: Iterable[Item], remove: Callable[[Item], None], log: logging.Logger | logging.LoggerAdapter,
                what: str) -> list[Item]:
    """Removes every item on its own, logging each removal and each failure; returns those removed."""
    removed = []
    for item in items:
        try:
            remove(item)
        except Exception as exc:
            log.warning(f"retention: could not remove {what} {item}: {type(exc).__name__}: {exc}")
            continue
        log.info(f"retention: removed {what} {item}")
        removed.append(item)
    return removed


def remove_folder(layout: DataLayout, folder: Path) -> None:
    """Moves the folder out of sight in one rename (into data/trash), then deletes it: no reader finds
    half a folder, and a deletion a crash interrupts is finished by `empty_trash`."""
    layout.trash.mkdir(parents=True, exist_ok=True)
    target = layout.trash / f"{folder.name}-{time.time_ns()}"
    folder.rename(target)
    shutil.rmtree(target)


def empty_trash(layout: DataLayout, log: logging.Logger | logging.LoggerAdapter) -> list[Path]:
    """Finishes the deletions a crash interrupted."""
    if not layout.trash.exists():
        return []
    return remove_each(sorted(layout.trash.iterdir()), shutil.rmtree, log, "interrupted deletion")
