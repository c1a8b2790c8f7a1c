"""Takes finished files out of the inbox: accepted ones into their dataset folder, others aside.

A file is finished once it ends in `.jsonl` (write `name.jsonl.part`, then rename), its modification
time is older than the settle time, and no process holds it open for writing (a writer may pause for
longer than the settle time). A file that cannot be taken in (unreadable, on another filesystem, ...)
gets `<name>.error.txt` beside it and is tried again on every sweep; it never holds up the others.
"""

import contextlib
import errno
import fcntl
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from batch_pipeline.core.layout import DataLayout, dataset_key, file_sha256
from batch_pipeline.core.storage import write_json_atomic, write_text_atomic
from batch_pipeline.intake.provenance import DatasetSource

_F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
_F_SETSIG = getattr(fcntl, "F_SETSIG", 10)
ERROR_NOTE_SUFFIX = ".error.txt"
_WRITER_PRESENT = frozenset({errno.EAGAIN, errno.EBUSY})
_HINTS = {
    errno.EXDEV: "data/inbox and data/datasets must be on the same filesystem: files are moved by renaming",
    errno.EACCES: "the pipeline's user must be able to read the file and write to data/inbox and data/datasets",
}


@dataclass(frozen=True)
class InboxOutcome:
    file_name: str
    dataset: str | None = None
    rejected_because: str | None = None
    failed_because: str | None = None


def _held_open_for_writing(path: Path) -> bool:
    """Whether a writer may still be at work: Linux refuses a read lease on a file that any process has
    open for writing. Where leases are unavailable (another system, a filesystem without them, a file
    the pipeline's user does not own) this says False and the settle time alone decides."""
    if sys.platform != "linux":
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        # A writer opening the file while the lease is held signals the holder, with SIGIO unless told
        # otherwise, and SIGIO kills a process by default; SIGURG is ignored by default.
        fcntl.fcntl(fd, _F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_RDLCK)
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)
        return False
    except OSError as exc:
        return exc.errno in _WRITER_PRESENT
    finally:
        os.close(fd)


def _is_finished(path: Path, settle_seconds: float, now: float) -> bool:
    return (path.is_file() and now - path.stat().st_mtime >= settle_seconds
            and not _held_open_for_writing(path))


def error_note(path: Path) -> Path:
    """Why a file was refused or could not be taken, beside it."""
    return path.with_name(path.name + ERROR_NOTE_SUFFIX)


def _unused_name(folder: Path, name: str) -> Path:
    candidate = folder / name
    stamp = time.strftime("%Y%m%dT%H%M%S")
    counter = 0
    while candidate.exists() or error_note(candidate).exists():
        counter += 1
        candidate = folder / f"{stamp}-{counter}-{name}"
    return candidate


def _reject(layout: DataLayout, path: Path, reason: str) -> InboxOutcome:
    layout.rejected.mkdir(parents=True, exist_ok=True)
    target = _unused_name(layout.rejected, path.name)
    write_text_atomic(error_note(target), f"{path.name} was not accepted: {reason}\n")
    os.replace(path, target)
    return InboxOutcome(path.name, rejected_because=reason)


def _accept_or_reject(layout: DataLayout, path: Path, max_bytes: int) -> InboxOutcome:
    size = path.stat().st_size
    if size == 0:
        return _reject(layout, path, "the file is empty")
    if size > max_bytes:
        return _reject(layout, path, f"the file is {size} bytes; the limit is {max_bytes} bytes")
    content_sha256 = file_sha256(path)
    key = dataset_key(path.name, content_sha256)
    dataset = layout.dataset(key)
    if dataset.input.exists():
        return _reject(layout, path, f"the same file was already accepted as dataset '{key}' "
                                     f"(results under {dataset.folder}); rename it to run it again")
    dataset.folder.mkdir(parents=True, exist_ok=True)
    record = DatasetSource(source="inbox", file_name=path.name, bytes=size, accepted_at=time.time(),
                           sha256=content_sha256)
    write_json_atomic(dataset.source, record.model_dump(exclude_none=True))
    os.replace(path, dataset.input)
    return InboxOutcome(path.name, dataset=key)


def _could_not_take(path: Path, exc: OSError) -> InboxOutcome:
    hint = _HINTS.get(exc.errno)
    reason = f"{exc} ({hint})" if hint else str(exc)
    # Best effort: the outcome carries the reason to the sensor log even where the inbox is read-only.
    with contextlib.suppress(OSError):
        if path.exists():
            write_text_atomic(error_note(path), f"{path.name} could not be taken in: {reason}\n"
                                                 "It stays here and is tried again on every sweep.\n")
        else:
            error_note(path).unlink(missing_ok=True)
    return InboxOutcome(path.name, failed_because=reason)


def sweep_inbox(layout: DataLayout, max_bytes: int, settle_seconds: float) -> list[InboxOutcome]:
    """Accepts or rejects every finished file, each on its own: one that fails is reported and left."""
    if not layout.inbox.exists():
        return []
    now = time.time()
    outcomes = []
    for path in sorted(layout.inbox.glob("*.jsonl")):
        try:
            if not _is_finished(path, settle_seconds, now):
                continue
            outcome = _accept_or_reject(layout, path, max_bytes)
            error_note(path).unlink(missing_ok=True)
        except OSError as exc:
            outcome = _could_not_take(path, exc)
        outcomes.append(outcome)
    return outcomes


def accepted_datasets(layout: DataLayout) -> list[str]:
    """Every dataset whose input is in place, whoever put it there."""
    if not layout.datasets.exists():
        return []
    return sorted(folder.name for folder in layout.datasets.iterdir() if (folder / "input.jsonl").exists())
