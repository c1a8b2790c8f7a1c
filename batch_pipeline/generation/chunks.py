"""Result chunks: the unit of progress that survives a crash.

Each chunk holds the next N finished requests in completion order, written atomically as
`chunk-NNNNN.parquet`. On rerun the rows already in chunks are skipped, so a crash loses at most
the results not yet flushed (less than one chunk). A chunk that cannot be read (truncated by a
failing disk, emptied by hand) is moved aside, never deleted, and its rows are generated again.
"""

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.core.storage import atomic_path, remove_temp_files

# `chunk-00042.parquet`: the 43rd chunk a run wrote in completion order; `chunk-rows-0000300.parquet`: the
# answers to the input block starting at row 300, written by a Ray actor (generation.ray).
_CHUNK_NAME = re.compile(r"^chunk-(rows-)?(\d{5,})\.parquet$")

SCHEMA = pa.schema([
    ("row_index", pa.int64()),
    ("custom_id", pa.string()),
    ("line_id", pa.string()),
    ("request_id", pa.string()),
    ("status_code", pa.int32()),
    ("body_json", pa.string()),
    ("text", pa.string()),
    ("finish_reason", pa.string()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("latency_s", pa.float64()),
    ("error_code", pa.string()),
    ("error_message", pa.string()),
    ("cached_tokens", pa.int64()),
    ("embedding", pa.list_(pa.float32())),
    ("reused", pa.string()),
])


class ResultRow(BaseModel):
    row_index: int
    custom_id: str
    line_id: str
    request_id: str
    status_code: int
    body_json: str
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    cached_tokens: int = 0
    embedding: list[float] | None = None  # an embeddings request's (first) vector
    reused: str | None = None  # `batch_copy` or `result_cache` when the answer was not generated for this row


def _fixed_size_vectors(table: pa.Table) -> pa.Table:
    """Vectors of one length are stored as a fixed-size list column, which readers can turn into a matrix
    without copying; a chunk mixing lengths (requests asking different `dimensions`) keeps plain lists."""
    vectors = table.column("embedding")
    lengths = set(pc.list_value_length(vectors).drop_null().to_pylist())
    if len(lengths) != 1:
        return table
    fixed = pa.list_(pa.float32(), lengths.pop())
    return table.set_column(table.schema.get_field_index("embedding"), pa.field("embedding", fixed), vectors.cast(fixed))


def chunk_name(number: int) -> str:
    return f"chunk-{number:05d}.parquet"


def block_chunk_name(first_row: int) -> str:
    """Named by its input block, so a retried block replaces its own chunk and no two actors collide."""
    return f"chunk-rows-{first_row:07d}.parquet"


def block_start(path: Path) -> int | None:
    """The first row of a block chunk (None for a run's numbered chunk)."""
    match = _CHUNK_NAME.match(path.name)
    return int(match.group(2)) if match and match.group(1) else None


class ChunkPolicy(BaseModel):
    """When a run saves what it holds: every `size` results, or once the oldest unsaved one has waited
    `seconds` (a slow first wave still lands early). A Ray actor saves one chunk per block of `size` rows."""

    size: int = Field(gt=0)
    seconds: float = Field(default=float("inf"), gt=0)

    @classmethod
    def of(cls, pipeline: PipelineConfig) -> "ChunkPolicy":
        return cls(size=pipeline.chunk_size, seconds=pipeline.chunk_seconds)

    def due(self, rows: int, oldest_age: float) -> bool:
        return rows >= self.size or oldest_age >= self.seconds


class ResumePoint(BaseModel):
    """What a run finds on disk before it generates anything."""

    done_rows: set[int]
    chunks: int
    temp_files_removed: int
    quarantined: list[Path]


def _readable(path: Path) -> bool:
    try:
        pq.read_table(path, columns=["row_index"])
    except (OSError, pa.ArrowException):
        return False
    return True


class ChunkStore:
    def __init__(self, folder: Path, fixed: tuple[Path, ...] | None = None):
        self.folder = folder
        self._fixed = fixed

    def snapshot(self) -> "ChunkStore":
        """The chunks on disk now, as a fixed list: a reader that writes several things from them
        (output and error files, totals, the unfinished lines) sees the same rows in each, whatever
        a run adds meanwhile."""
        return self if self._fixed is not None else ChunkStore(self.folder, tuple(self.paths()))

    @property
    def quarantine(self) -> Path:
        """Unreadable chunks, kept for inspection outside the folder runs read."""
        return self.folder.parent / "quarantine"

    def paths(self) -> list[Path]:
        if self._fixed is not None:
            return list(self._fixed)
        if not self.folder.exists():
            return []
        found = [((bool(m.group(1)), int(m.group(2))), p) for p in self.folder.iterdir()
                 if (m := _CHUNK_NAME.match(p.name))]
        return [path for _, path in sorted(found)]

    def prepare(self) -> ResumePoint:
        """Removes interrupted writes and moves unreadable chunks to the quarantine."""
        self.folder.mkdir(parents=True, exist_ok=True)
        removed = remove_temp_files(self.folder)
        quarantined = []
        for path in self.paths():
            if not _readable(path):
                self.quarantine.mkdir(exist_ok=True)
                target = self.quarantine / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9}"
                path.rename(target)
                os.utime(target)  # retention counts from the quarantine, not from the write
                quarantined.append(target)
        return ResumePoint(done_rows=self.done_rows(), chunks=len(self.paths()), temp_files_removed=removed,
                           quarantined=quarantined)

    def done_rows(self) -> set[int]:
        done: set[int] = set()
        for path in self.paths():
            done.update(pq.read_table(path, columns=["row_index"]).column(0).to_pylist())
        return done

    def next_number(self) -> int:
        numbers = [int(m.group(2)) for path in self.paths() if not (m := _CHUNK_NAME.match(path.name)).group(1)]
        return max(numbers) + 1 if numbers else 0

    def write(self, number: int, rows: list[ResultRow]) -> Path:
        return self._write(self.folder / chunk_name(number), rows)

    def write_block(self, first_row: int, rows: list[ResultRow]) -> Path:
        return self._write(self.folder / block_chunk_name(first_row), rows)

    def _write(self, target: Path, rows: list[ResultRow]) -> Path:
        table = _fixed_size_vectors(pa.Table.from_pylist([row.model_dump() for row in rows], schema=SCHEMA))
        with atomic_path(target) as temp:
            pq.write_table(table, temp)
        return target

    def row_count(self) -> int:
        return sum(pq.ParquetFile(path).metadata.num_rows for path in self.paths())

    def iter_rows(self, columns: list[str] | None = None) -> Iterator[dict]:
        """Every finished row, chunk by chunk, in constant memory."""
        for path in self.paths():
            yield from pq.read_table(path, columns=columns).to_pylist()

    def covers(self, rows: int) -> bool:
        """Whether the chunks hold an answer for each of the requests 0..rows-1: the set of row
        indexes, not the count, since a row written twice must not stand in for a missing one."""
        return self.row_count() >= rows and self.done_rows() >= set(range(rows))
