"""One `make run` per data folder: a second one would fight the first for its ports, and its shutdown
would stop every slot's engine host (and its shim's start would delete the first one's upload temps).

The lock is `flock` on a file in the data folder, held for the life of the process: the kernel frees it
when the holder dies, however it dies, so a stale lock file never blocks a start. The holder's pid is
written into the file for the message a second start prints.
"""

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_FILE = "serve.lock"


class AlreadyRunning(RuntimeError):
    """Another process holds the data folder."""


def hold_data_folder(data_dir: Path) -> IO:
    """Takes the folder's lock or raises AlreadyRunning naming the holder; keep the returned handle open
    (closing it, or exiting, releases the lock). Touches nothing but the lock file."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise AlreadyRunning(f"another batch_pipeline (pid {holder}) is already serving the data folder "
                             f"{data_dir}; stop it first, or point BATCH_PIPELINE_DATA at another folder") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
