"""A kernel record lock on a file, taken without waiting: freed when the holder's process dies, and not
inherited by forked children (vLLM's engine processes), unlike `flock`."""

import fcntl
from pathlib import Path
from typing import IO


def try_record_lock(path: Path) -> IO | None:
    """The open, locked file, or None when another process holds it. Closing any descriptor of the file
    in this process frees the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+", encoding="utf-8")
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def write_holder(handle: IO, text: str) -> None:
    """Who holds the lock, in the lock file, for those who wait to name."""
    handle.seek(0)
    handle.truncate()
    handle.write(text)
    handle.flush()
