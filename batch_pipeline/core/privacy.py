"""Who may read what the service writes: its own user only, unless the data is shared with a group.

Every process the service starts sets its umask first (children inherit it: Dagster's daemon, webserver,
code servers and run workers, the shim, engine hosts), and atomic writes set their files' mode
explicitly, so a file is private even when written by a process whose umask was left lax.
"""

import os
from pathlib import Path

PRIVATE_UMASK = 0o077
GROUP_UMASK = 0o027
_file_mode = 0o600
_dir_mode = 0o700


def apply_umask(share_with_group: bool) -> None:
    """Sets this process's umask and the mode of the files it writes atomically (0600, or 0640 when
    shared with the group)."""
    global _file_mode, _dir_mode
    umask = GROUP_UMASK if share_with_group else PRIVATE_UMASK
    os.umask(umask)
    _file_mode, _dir_mode = 0o666 & ~umask, 0o777 & ~umask


def file_mode() -> int:
    return _file_mode


def private_folder(folder: Path) -> Path:
    """The data folder itself (or any folder of ours): created if needed, and narrowed to the umask's
    mode even when an older release created it world-readable."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, _dir_mode)
    return folder


def secret_folder(folder: Path) -> Path:
    """A folder holding secrets (engine host keys): 0700 even when the data is shared with a group."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder
