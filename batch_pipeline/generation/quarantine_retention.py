"""Quarantined chunks age out: kept for inspection `quarantine_days` after they were set aside (their
modification time is the quarantine's, chunks.ChunkStore.prepare), then deleted with their folder."""

import contextlib
import logging
from pathlib import Path

from batch_pipeline.core.layout import DataLayout, ResponsePaths
from batch_pipeline.core.retention import cutoff, modified_before, remove_each
from batch_pipeline.generation.chunks import ChunkStore


def quarantine_folders(layout: DataLayout) -> list[Path]:
    return [ChunkStore(ResponsePaths(cell).chunks).quarantine for cell in sorted(layout.datasets.glob("*/responses/*"))]


def purge_quarantine(layout: DataLayout, days: float, now: float,
                     log: logging.Logger | logging.LoggerAdapter) -> list[Path]:
    before = cutoff(days, now)
    if before is None:
        return []
    removed = []
    for folder in quarantine_folders(layout):
        try:
            old = [path for path in sorted(folder.iterdir()) if modified_before(path, before)]
        except FileNotFoundError:
            continue  # nothing was ever quarantined there
        except OSError as exc:
            log.warning(f"retention: could not read {folder}: {type(exc).__name__}: {exc}")
            continue
        removed += remove_each(old, Path.unlink, log, "quarantined chunk")
        with contextlib.suppress(OSError):  # not empty: younger chunks stay
            folder.rmdir()
    return removed
