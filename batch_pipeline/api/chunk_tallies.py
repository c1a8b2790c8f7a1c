"""Each cell's totals (rows, successes, tokens) as the shim shows them, each chunk file read once.

A refresh every few seconds must not re-read every chunk of a 50,000-row batch, so each chunk's tally
is kept; but by the file's identity, not its name: a run reuses the number of a chunk it quarantined
(with other rows in it), and a retried Ray block replaces its own file. A cell's tallies are
forgotten once its batch is finished, so they last only as long as the batches that read them.
"""

import os
from pathlib import Path

from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.results import ResponseTotals, combine, tally_chunk

_Stamp = tuple[int, int, int]


def _stamp(path: Path) -> _Stamp:
    """An atomic write (temp file, rename) gives the chunk a new inode."""
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class ChunkTallies:
    def __init__(self):
        self._cells: dict[Path, dict[Path, tuple[_Stamp, ResponseTotals]]] = {}

    def totals(self, store: ChunkStore) -> ResponseTotals:
        """The chunks `store` lists; a chunk gone from it is dropped from what is kept."""
        known = self._cells.get(store.folder, {})
        current = {}
        for path in store.paths():
            stamp = _stamp(path)
            kept = known.get(path)
            current[path] = kept if kept is not None and kept[0] == stamp else (stamp, tally_chunk(path))
        self._cells[store.folder] = current
        return combine(totals for _, totals in current.values())

    def forget(self, folder: Path) -> None:
        self._cells.pop(folder, None)

    def cells(self) -> int:
        return len(self._cells)
