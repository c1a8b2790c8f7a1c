"""One writer per dataset x model cell: a run holds its cell's lock for its whole life.

Two runs of one cell (the sensor's and one launched from the UI, a backfill or a script) would number
their chunks alike, overwrite each other's and generate the same rows. So a run takes `cell.lock` in
the cell's responses folder before it reads what is done, and keeps it until its files are written.
A second run waits for it, up to a deadline, then ends naming the run that holds it.

The lock is a POSIX record lock (`fcntl.lockf`), which belongs to the process (not to an open file that
a forked vLLM EngineCore would inherit): the kernel frees it when the run worker dies. Record locks do
not exclude threads of one process, so a process-local lock per cell does that.
"""

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import BaseModel, ValidationError

from batch_pipeline.core.record_lock import try_record_lock, write_holder

_LOCK_FILE = "cell.lock"
_POLL_SECONDS = 0.5


class CellHolder(BaseModel):
    """Who holds a cell, as written into its lock file."""

    run_id: str
    pid: int
    host: str
    since: float

    def describe(self) -> str:
        return (f"run {self.run_id} (pid {self.pid} on {self.host}, holding it since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.since))})")


class CellBusy(RuntimeError):
    """Another run kept the cell past the deadline."""

    def __init__(self, folder: Path, holder: CellHolder | None, waited: float):
        who = holder.describe() if holder else "another run (it has not recorded itself yet)"
        super().__init__(f"the cell {folder} is being written by {who}; waited {waited:.0f}s "
                         "(BATCH_PIPELINE_CELL_WAIT_SECONDS). That run writes its answers; materialize "
                         "again after it ends if anything is still missing.")
        self.holder = holder


_local_guard = threading.Lock()
_local_locks: dict[Path, threading.Lock] = {}
# Who holds each cell this process holds, for its other threads: they must not read the lock file,
# since closing any descriptor of it would drop this process's record lock.
_local_holders: dict[Path, CellHolder] = {}


def _local_lock(folder: Path) -> threading.Lock:
    with _local_guard:
        return _local_locks.setdefault(folder, threading.Lock())


def read_holder(folder: Path) -> CellHolder | None:
    """The holder a cell's lock file names; None when no run has held it or it is being rewritten.
    Never call it in a process that holds the cell: closing any descriptor of the file drops a record lock."""
    try:
        return CellHolder.model_validate_json((folder / _LOCK_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValidationError):
        return None




@contextlib.contextmanager
def hold_cell(folder: Path, run_id: str, wait_seconds: float,
              on_wait: Callable[[CellHolder | None], None] = lambda holder: None) -> Iterator[CellHolder]:
    """Holds the cell whose responses live in `folder`; waits (calling `on_wait` once with the holder)
    while another run holds it, and raises CellBusy after `wait_seconds`."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    local, waited = _local_lock(folder), False

    def note_wait(holder: CellHolder | None) -> None:
        nonlocal waited
        if not waited:
            waited = True
            on_wait(holder)

    if not local.acquire(blocking=False):
        note_wait(_local_holders.get(folder))
        if not local.acquire(timeout=max(0.0, wait_seconds)):
            raise CellBusy(folder, _local_holders.get(folder), time.monotonic() - started)
    try:
        while (handle := try_record_lock(folder / _LOCK_FILE)) is None:
            note_wait(read_holder(folder))  # another process holds it: reading the file is safe here
            if time.monotonic() - started >= wait_seconds:
                raise CellBusy(folder, read_holder(folder), time.monotonic() - started)
            time.sleep(_POLL_SECONDS)
        holder = CellHolder(run_id=run_id, pid=os.getpid(), host=socket.gethostname(), since=time.time())
        try:
            write_holder(handle, holder.model_dump_json())
            _local_holders[folder] = holder
            yield holder
        finally:
            _local_holders.pop(folder, None)
            handle.close()  # closing releases the record lock
    finally:
        local.release()
