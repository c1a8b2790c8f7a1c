"""data/inbox/rejected/ ages out: a refused file and its note go together, counted from the refusal.

A refused file keeps its writer's modification time (it is moved, not copied), so its note, written at
the refusal, dates the pair; a file whose note is gone (or a note alone) is dated by itself.
"""

import logging
from pathlib import Path

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.retention import cutoff, modified_before, remove_each
from batch_pipeline.intake.inbox import ERROR_NOTE_SUFFIX, error_note


def _dated_by(path: Path) -> Path:
    note = path if path.name.endswith(ERROR_NOTE_SUFFIX) else error_note(path)
    return note if note.exists() else path


def old_rejections(layout: DataLayout, before: float) -> list[Path]:
    if not layout.rejected.exists():
        return []
    return sorted(path for path in layout.rejected.iterdir()
                  if path.is_file() and modified_before(_dated_by(path), before))


def purge_rejected(layout: DataLayout, days: float, now: float,
                   log: logging.Logger | logging.LoggerAdapter) -> list[Path]:
    before = cutoff(days, now)
    if before is None:
        return []
    return remove_each(old_rejections(layout, before), Path.unlink, log, "rejected file")
