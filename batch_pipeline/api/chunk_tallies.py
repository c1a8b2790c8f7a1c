"""Each cell's lines as the shim shows them (request_counts and partial_output), each chunk read once.

A refresh every few seconds must not re-read every chunk of a 50,000-row batch, so each chunk's index
is kept; but by the file's identity, not its name: a run reuses the number of a chunk it quarantined
(with other rows in it), and a retried Ray block replaces its own file. A cell's indexes are
forgotten once its batch is finished, so they last only as long as the batches that read them.
"""

import os
import threading
from pathlib import Path

import pyarrow as pa

from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.results import CellLines

_Stamp = tuple[int, int, int]


def _stamp(path: Path) -> _Stamp | None:
    """An atomic write (temp file, rename) gives the chunk a new inode; None once it is gone."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class ChunkTallies:
    def __init__(self):
        self._cells: dict[Path, dict[Path, tuple[_Stamp, pa.Table]]] = {}
        self._lock = threading.Lock()  # the refresher and HTTP threads read cells at once

    def cell_lines(self, store: ChunkStore) -> CellLines:
        """The lines a reader of the cell can have now, a run possibly still adding chunks."""
        stamps = {path: _stamp(path) for path in store.paths()}
        with self._lock:
            kept = self._cells.get(store.folder, {})
        known = {path: index for path, (stamp, index) in kept.items() if stamps.get(path) == stamp}
        read_before = set(known)
        cell = CellLines(store, growing=True, known=known)
        entries = {path: kept[path] if path in read_before else (stamps.get(path), index)
                   for path, index in known.items() if stamps.get(path) is not None}
        with self._lock:
            self._cells[store.folder] = entries
        return cell

    def forget(self, folder: Path) -> None:
        with self._lock:
            self._cells.pop(folder, None)

    def cells(self) -> int:
        return len(self._cells)
